"""Replaying stored early-stopping traces under other detector thresholds (issue 29, item 3).

Every DIP fit run with a detector leaves ``es_trace.json`` beside its record: per image, the float64
statistics a detector reads at a grid of windows and weights, and the reported output's PSNR
(``fitting/early_stop.py``). ``early_stop.detect`` runs the very ``Watch`` the fit ran on those numbers, so
any thresholds the grid holds are scored without refitting, and the fit's own thresholds give back its
record exactly. No Optuna here: ``es_search`` proposes the thresholds.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from lipsweep.core.paths import ES_TRACE, config_of, record_of
from lipsweep.fitting.config import LATER_FIT_DEFAULTS
from lipsweep.fitting.early_stop import TRACE_WINDOWS, default_patience, default_window, detect, scores


@dataclass(frozen=True)
class Thresholds:
    """One detector setting, as the trial fields spell it (``es_alpha`` matters to EMV only)."""

    early_stop: str
    window: int
    patience: int
    alpha: float = 0.1
    lag: int = 0  # ``es_lag`` as proposed; a fit returns the output ``returned_lag`` after the minimum

    @property
    def returned_lag(self) -> int:
        """The lag a fit runs with: at most the patience (it refuses more: that output comes after the stop)."""
        return min(self.lag, self.patience)

    def flags(self) -> str:
        """The ``--set`` items that put these thresholds into an experiment or a ``lipsweep run``."""
        alpha = f" es_alpha={self.alpha:g}" if self.early_stop == "emv" else ""
        lag = f" es_lag={self.returned_lag}" if self.returned_lag else ""
        return f"early_stop={self.early_stop} es_window={self.window} es_patience={self.patience}{alpha}{lag}"

    def describe(self) -> str:
        lag = f"; the output {self.returned_lag} after the minimum" if self.returned_lag else ""
        if self.early_stop == "emv":
            return (f"ES-EMV: exponential moving variance with weight {self.alpha:g}, first check after "
                    f"{self.window} outputs, patience {self.patience} outputs{lag}")
        return f"ES-WMV: variance of the last {self.window} outputs, patience {self.patience} outputs{lag}"

    def as_dict(self) -> dict:
        """The trial fields a fit runs with."""
        return {"early_stop": self.early_stop, "es_window": self.window, "es_patience": self.patience,
                **({"es_alpha": self.alpha} if self.early_stop == "emv" else {}), "es_lag": self.returned_lag}

    def trial_params(self) -> dict:
        """The Optuna parameters that propose these thresholds (the lag as proposed, one of the choices)."""
        return {**self.as_dict(), "es_lag": self.lag}


@dataclass(frozen=True)
class FitTrace:
    """One image of one stored fit, as a replay sees it: where it lies, what it is, the budget and the
    detector it ran with (``truncated``: it ran with ``es_stop`` and stopped, so its trace ends at detection
    + patience), and its trace columns."""

    where: str
    image: str
    task: str
    seed: int
    method: str
    level: int
    sparsity: float
    iters: int
    ran: Thresholds
    es_stop: bool
    truncated: bool
    trace: Mapping[str, Sequence[float]] = field(repr=False, compare=False)


@dataclass(frozen=True)
class Replayed:
    """The per-fit scores (``early_stop.scores``) of the fits a replay could score, and those it refused."""

    fits: tuple[FitTrace, ...]
    scores: tuple[dict, ...]
    refused: tuple[FitTrace, ...] = ()


def trace_dirs(root: Path) -> list[Path]:
    """Every finished level directory holding a trace: dense levels, chain levels, evaluations."""
    found = [p.parent for pattern in (f"dense/*/{ES_TRACE}", f"chains/*/level_*/{ES_TRACE}", f"evals/*/{ES_TRACE}")
             for p in sorted(root.glob(pattern))]
    return [d for d in found if record_of(d).is_file()]


def _json(path: Path) -> dict:
    return json.loads(path.read_text())


def fit_of(root: Path, directory: Path, record: Mapping) -> tuple[dict, int]:
    """The dense payload (problem, fit, seed) behind a level directory and that fit's iterations: the dense
    fit's own, a chain level's ``level_iters``; an evaluation's config holds no budget, so its record's
    ``es_iters_run + es_saved`` (what ``early_stop.scores`` split the budget into)."""
    kind = directory.relative_to(root).parts[0]
    if kind == "dense":
        dense = _json(config_of(directory))
        return dense, int(dense["fit"]["iters"])
    if kind == "chains":
        chain = _json(config_of(directory.parent))
        return _json(config_of(root / "dense" / chain["dense"])), int(chain["level_iters"])
    return _json(config_of(directory))["target"], int(round(record["es_iters_run"] + record["es_saved"]))


def ran_with(fit: Mapping, iters: int) -> tuple[Thresholds, bool]:
    """The detector a fit ran with (keys pinned before issue 29 are left out at their defaults) and es_stop."""
    fit = {**LATER_FIT_DEFAULTS, **fit}
    window = fit["es_window"] if fit["es_window"] is not None else default_window(int(fit["iters"]))
    patience = fit["es_patience"] if fit["es_patience"] is not None else default_patience(int(fit["iters"]))
    return (Thresholds(fit["early_stop"], int(window), int(patience), float(fit["es_alpha"]), int(fit["es_lag"])),
            bool(fit["es_stop"]))


def traces_in(root: Path, directory: Path) -> list[FitTrace]:
    """The traces of one level directory, one per image (Algorithm 2 fits several)."""
    record = _json(record_of(directory))
    dense, iters = fit_of(root, directory, record)
    ran, es_stop = ran_with(dense["fit"], iters)
    images = (dense["problem"]["image"], *dense.get("multi_images", ()))
    where = directory.relative_to(root).as_posix()
    truncated = es_stop and record.get("es_confirmed") == 1.0  # every image confirmed: the fit ended there
    return [FitTrace(where, image, dense["problem"]["task"], int(dense["seed"]), str(record["method"]),
                     int(record["level"]), float(record["sparsity"]), iters, ran, es_stop, truncated, trace)
            for image, trace in zip(images, _json(directory / ES_TRACE))]


def discover(root: Path | str, keys: Collection[str] | None = None) -> list[FitTrace]:
    """Every stored fit with a trace in a trunk store; ``keys``: only the dense and chain keys named (an
    experiment's fits)."""
    root = Path(root)
    out = []
    for directory in trace_dirs(root):
        parts = directory.relative_to(root).parts
        if keys is None or parts[1] in keys:
            out += traces_in(root, directory)
    return out


def replay(fit: FitTrace, th: Thresholds) -> dict | None:
    """``early_stop.scores`` of the thresholds on one fit; None (refused) on a truncated trace when the
    patience exceeds the one it ran with, or the detection is not confirmed before the trace ends: what the
    rest of the budget would have shown was never computed."""
    if fit.truncated and th.patience > fit.ran.patience:
        return None
    found = detect(fit.trace, th.early_stop, th.window, th.patience, th.alpha)
    if fit.truncated and found.confirmed_at is None:
        return None
    return scores(fit.trace, found, fit.iters, th.returned_lag)


def evaluate(traces: Sequence[FitTrace], early_stop: str, window: int, patience: int,
             alpha: float = 0.1, lag: int = 0) -> Replayed:
    """Per-fit scores of one setting over stored fits, those it cannot score refused (``replay``)."""
    th = Thresholds(early_stop, window, patience, alpha, lag)
    return evaluate_each(traces, lambda fit: th)


def evaluate_each(traces: Sequence[FitTrace], setting) -> Replayed:
    """Like ``evaluate`` with a setting chosen per fit (``setting(fit) -> Thresholds``): each fit's own
    thresholds, or the defaults scaled to each fit's budget."""
    done = [(fit, replay(fit, setting(fit))) for fit in traces]
    return Replayed(tuple(f for f, s in done if s is not None), tuple(s for _, s in done if s is not None),
                    tuple(f for f, s in done if s is None))


def nearest_window(window: int) -> int:
    """The trace window closest to ``window`` (the smaller on a tie): a setting every trace can replay."""
    return min(TRACE_WINDOWS, key=lambda w: (abs(w - window), w))


def default_of(fit: FitTrace) -> Thresholds:
    """What a fit gets with ``early_stop: wmv`` and no window or patience: both scaled to its budget
    (``early_stop.default_window`` / ``default_patience``), the window the trace's nearest when it lacks it."""
    window = default_window(fit.iters)
    window = window if f"wmv_{window}" in fit.trace else nearest_window(window)
    return Thresholds("wmv", window, default_patience(fit.iters))


def reference_of(fit: FitTrace) -> Thresholds:
    """ES-WMV's notebook setting (W = 100, P = 1000 of 5000 iterations) with the patience scaled to the budget."""
    return Thresholds("wmv", 100, max(1, round(fit.iters * 1000 / 5000)))


@dataclass(frozen=True)
class Score:
    """A setting's mean ``es_gap`` (dB), mean fraction of the budget run until confirmed (1 when unconfirmed:
    it saves nothing), fits it fires on (confirmed), fits scored and refused, and the single objective."""

    gap: float
    fraction: float
    fires: int
    fits: int
    refused: int
    objective: float

    def as_dict(self) -> dict:
        return {"mean_gap_db": self.gap, "mean_fraction_run": self.fraction, "fires_on": self.fires,
                "fits": self.fits, "refused": self.refused, "objective": self.objective}


def score(done: Replayed, cost: float) -> Score:
    """Mean gap + ``cost`` dB per whole budget run: the search's objective (lower is better)."""
    if not done.scores:
        return Score(float("nan"), float("nan"), 0, 0, len(done.refused), float("nan"))
    gap = float(np.mean([s["es_gap"] for s in done.scores]))
    fraction = float(np.mean([s["es_iters_run"] / f.iters for f, s in zip(done.fits, done.scores)]))
    fires = int(sum(s["es_confirmed"] for s in done.scores))
    return Score(gap, fraction, fires, len(done.scores), len(done.refused), gap + cost * fraction)


def per_group(done: Replayed, by: str) -> dict[str, float]:
    """Mean ``es_gap`` per task (or image, method...) of a replay."""
    groups: dict[str, list[float]] = {}
    for fit, s in zip(done.fits, done.scores):
        groups.setdefault(str(getattr(fit, by)), []).append(s["es_gap"])
    return {k: float(np.mean(v)) for k, v in sorted(groups.items())}
