"""What every ``lipsweep`` subcommand shares: the one-line-error parser and the argument types."""

from __future__ import annotations

import argparse

DEFAULT_STORE = ".lipsweep/store"
PROFILES = ("paper", "local", "smoke")


class Parser(argparse.ArgumentParser):
    """argparse, but its errors are one line (no usage dump) and exit 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message}\n")


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
