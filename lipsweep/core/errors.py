"""The one error type users see: a bad value, named by its field, with what is allowed; and the checks
every config shares (written once here, so each field is one line in its declaration)."""

from __future__ import annotations

import math
from collections.abc import Iterable


class ConfigError(ValueError):
    """Bad user input, raised before any work starts; the CLI prints it on one line and exits 2."""

    def __init__(self, field: str, message: str):
        self.field, self.message = field, message
        super().__init__(f"{field}: {message}")

    def __reduce__(self):  # Ray copies and pickles exceptions raised in trials
        return (type(self), (self.field, self.message))


def allowed(values: Iterable[object]) -> str:
    """Render allowed values for an error message."""
    return ", ".join(str(v) for v in values)


def check_choice(field: str, value: object, choices: Iterable[object]) -> None:
    choices = list(choices)
    if value not in choices:
        raise ConfigError(field, f"unknown value {value!r}; allowed: {allowed(choices)}")


def check_positive(field: str, value: float, *, allow_zero: bool = False) -> None:
    """A finite number > 0 (or >= 0): an inf or nan learning rate or noise level trains to NaN metrics."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(field, f"must be a finite number, got {value!r}")
    if value < 0 or (value == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ConfigError(field, f"must be {bound}, got {value!r}")


def check_int(field: str, value: object, minimum: int | None = None, what: str = "") -> None:
    """An integer (never a bool) of at least ``minimum``; ``what`` says what it counts, for the message."""
    if isinstance(value, bool) or not isinstance(value, int) or (minimum is not None and value < minimum):
        bound = {None: "an integer", 1: "a positive integer"}.get(minimum, f"an integer >= {minimum}")
        raise ConfigError(field, f"must be {bound}{what}, got {value!r}")


def check_fraction(field: str, value: object, *, closed_low: bool, what: str = "") -> None:
    """A number in [0, 1) (``closed_low``) or (0, 1)."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and (
        0.0 <= value < 1.0 if closed_low else 0.0 < value < 1.0)
    if not ok:
        raise ConfigError(field, f"must be {what or 'a fraction'} in {'[0, 1)' if closed_low else '(0, 1)'}, "
                                 f"got {value!r}")
