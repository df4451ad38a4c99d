"""What a sweep's runs are called: the fields that vary between its trials, as short names for MLflow's run
lists (its tables cut names at ~18 characters) and as ``k=v,...`` labels for tags, descriptions and messages."""

from __future__ import annotations

from lipsweep.kinds.base import FIELD_DEFAULTS, FIELD_NAMES, TrialConfig


def is_cases(axis: str) -> bool:
    """``cases`` / ``cases_images`` / ...: an axis whose values are whole field mappings (several such axes
    cross, e.g. images with their own sizes x methods with their own options)."""
    return axis == "cases" or axis.startswith("cases_")


# Short names of fields in run names (``rw.05 s1``); any other field goes by its words' initials.
SHORT_FIELDS = {"rewind": "rw", "iters": "it", "size": "px", "levels": "lv", "lr": "lr", "ema": "ema",
                "sparsities": "sp", "snapshots": "snap", "synflow_rounds": "sfr", "epochs": "ep", "examples": "ex"}
NAMED_FIELDS = ("kind", "image", "task", "model", "method")  # a string always named, at its default too
SHORT_VALUES = {"remaining": "rem", "observation": "obs"}  # rewind budget, IMP target


def varying(trials: tuple[TrialConfig, ...], axes: dict[str, list]) -> list[str]:
    """The fields whose values differ between the trials, in the order the axes name them (a case's fields
    where the case axis stands): what tells one run of this sweep from another."""
    order = [f for key, values in axes.items()
             for f in (dict.fromkeys(k for case in values for k in case) if is_cases(key) else [key])]
    order += [f for f in FIELD_NAMES if f not in order]
    return [f for f in dict.fromkeys(order) if len({repr(getattr(t, f)) for t in trials}) > 1]


def _compact(value: float) -> str:
    text = f"{value:g}"
    return text.replace("0.", ".", 1) if text.startswith("0.") else text


def _piece(name: str, value: object, default: object) -> str:
    """One field in a run name: a number after its short name (``rw.05``, ``s1``), a string as its value
    (an image by its file name), a switch by its short name; a string or switch at its default left out."""
    short = SHORT_FIELDS.get(name) or "".join(w[0] for w in name.split("_"))
    if isinstance(value, bool):
        return "" if value == default else short if value else f"no-{short}"
    if isinstance(value, (int, float)):
        return f"{short}{_compact(value)}"
    if isinstance(value, str):
        shown = SHORT_VALUES.get(value, value.rsplit("/", 1)[-1])
        shown = f"from-{shown}" if name.startswith("source_") else shown
        return "" if value == default and name not in NAMED_FIELDS else shown
    if isinstance(value, tuple) and value:
        items = [str(v).rsplit("/", 1)[-1] for v in value]
        return f"{short}:{items[0]}" + (f"+{len(items) - 1}" if len(items) > 1 else "")
    return ""


def trial_labels(trials: tuple[TrialConfig, ...], axes: dict[str, list]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(short, long) labels: the fields that vary in this sweep only, short ones for MLflow's run names (its
    tables cut names at ~18 characters) and ``k=v,...`` ones; short names that would repeat fall back to
    the long ones."""
    names = varying(trials, axes)
    long = tuple(",".join(f"{n}={getattr(t, n)}" for n in names) or "base" for t in trials)
    short = tuple(" ".join(p for n in names if (p := _piece(n, getattr(t, n), FIELD_DEFAULTS[n]))) or "base"
                  for t in trials)
    return (short if len(set(short)) == len(short) else long), long
