"""What every ``lipsweep`` subcommand shares: the one-line-error parser and the argument types."""

from __future__ import annotations

import argparse
from pathlib import Path

DEFAULT_STORE = ".lipsweep/store"
PROFILES = ("paper", "local", "smoke")


class Parser(argparse.ArgumentParser):
    """argparse, but its errors are one line (no usage dump) and exit 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message}\n")


def int_arg(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None


def positive_int_arg(text: str) -> int:
    value = int_arg(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


def iterations_arg(text: str) -> list[int]:
    """``100,500,1000``: iterations (``--snapshots``); whether they fit in the run is the config's check."""
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated iterations like 100,500,1000, got {text!r}") from None


def count_arg(text: str) -> int:
    value = int_arg(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be an integer >= 0, got {value} (a negative count retries forever)")
    return value


def out_dir_arg(text: str) -> str:
    """An output directory: new or existing, never an existing file (which mkdir would crash on)."""
    if Path(text).exists() and not Path(text).is_dir():
        raise argparse.ArgumentTypeError(f"{text!r} is a file; give a directory")
    return text
