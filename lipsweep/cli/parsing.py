"""What every ``lipsweep`` subcommand shares: the one-line-error parser and the argument types."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

DEFAULT_STORE = ".lipsweep/store"
PROFILES = ("paper", "local", "smoke")


class DefaultsFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """``--help`` shows each option's default, except where there is nothing to show: a flag's False, or a None
    whose meaning ("per task", "the experiment's") the help text already says."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        empty = action.default is None or action.default is False or action.default in ((), [], argparse.SUPPRESS)
        if empty or "%(default)" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


class Parser(argparse.ArgumentParser):
    """argparse, but its errors are one line (no usage dump) and exit 2, and every ``--help`` shows defaults."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("formatter_class", DefaultsFormatter)
        super().__init__(*args, **kwargs)

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


class VersionAction(argparse.Action):
    """``--version``: the package, the checkout it runs from and the libraries a result depends on, read from
    the installed metadata (nothing imported: it answers as fast as ``--help``)."""

    def __init__(self, option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS, help=None) -> None:
        super().__init__(option_strings, dest, nargs=0, default=default, help=help)

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        print(version_line())  # stdout, as argparse's own --version
        parser.exit(0)


def version_line() -> str:
    from importlib.metadata import PackageNotFoundError, version

    from lipsweep.core.versions import git_commit, package_version

    commit, dirty = git_commit()
    where = f" (commit {commit[:10]}{', uncommitted changes' if dirty else ''})" if commit else ""
    libs = []
    for dist in ("torch", "ray", "mlflow", "optuna"):
        try:
            libs.append(f"{dist} {version(dist)}")
        except PackageNotFoundError:
            libs.append(f"{dist} not installed")
    return f"lipsweep {package_version()}{where}; Python {sys.version.split()[0]}, {', '.join(libs)}"
