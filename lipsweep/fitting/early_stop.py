"""Early stopping (ES) of one fit without the clean image: detectors, their trace, and replay (issue 29).

The paper reports the oracle (the best PSNR of the EMA output over iterations, chosen with the clean image);
a user without the clean image gets what a detector returns. ES-WMV (Wang et al., "Early Stopping for Deep
Image Prior", TMLR 2023; code sun-umn/Early_Stopping_for_DIP, ES_WMV.ipynb) watches the windowed variance of
the raw outputs, VAR_W(t) = (1/W) sum_w ||x_w - mean||^2 / N over the last W outputs, and returns the
iteration of its minimum once P checks bring no new (strictly lower) minimum; ES-EMV (ES_EMV.ipynb) watches
the exponential moving variance emv_t = (1-a)(emv_{t-1} + a ||x_t - ema_{t-1}||^2) instead, in O(1) memory.

Every detector decides from one column of a per-iteration *trace* (float64 statistics at a grid of windows
and weights, plus the reported output's PSNR for scoring), online and in replay alike: the same ``Watch``
reads the same numbers, so a replayed ``es_iter`` equals the online one by construction (docs/science.md,
"Early stopping"). Detectors read only the network's outputs, never the clean image; PSNR columns are for
scoring the choice afterwards.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from lipsweep.core.errors import ConfigError, check_int, check_positive
from lipsweep.core.registry import Registry

if TYPE_CHECKING:
    import torch

TRACE_WINDOWS = (25, 50, 100, 200)  # WMV windows every trace holds (replay at any patience)
TRACE_ALPHAS = (0.05, 0.1, 0.2)  # EMV weights every trace holds
NO_PEAK_TASKS = ("fit",)  # the clean image itself is fitted: nothing to overfit, no peak to find
PEAK_BAND_DB = 0.5  # es_peak_width: iterations the reported output stays within this of its peak


@dataclass(frozen=True)
class Detector:
    """A registry entry: ``column`` names the trace column it watches, from its window and weight. Every
    detector checks once ``es_window`` outputs are in (WMV: its window is full; EMV: the notebook's burn-in)."""

    column: Callable[[int, float], str]


DETECTORS: Registry[Detector] = Registry("early_stop")
# ES-WMV: the windowed moving variance of the last es_window outputs
DETECTORS.register("wmv", Detector(column=lambda window, alpha: f"wmv_{window}"))
# ES-EMV: the exponential moving variance with weight es_alpha
DETECTORS.register("emv", Detector(column=lambda window, alpha: f"emv_{alpha:g}"))
NONE = "none"


def default_window(iters: int) -> int:
    """ES-WMV's W = 100 at 5000 iterations is 2% of them, but the window must span the outputs' step-to-step
    jitter, which does not shrink with the budget: a tenth of the fit, between 25 and 100 (50 at 500)."""
    return max(1, min(iters, max(25, min(100, iters // 10))))


def default_patience(iters: int) -> int:
    """ES-WMV's P = 1000 at 5000 iterations: a fifth of the fit (100 at 500, 600 at 3000)."""
    return max(1, iters // 5)


def check_detector(early_stop: str, window: int | None, patience: int | None, alpha: float, iters: int | None,
                   task: str | None = None, lag: int = 0) -> None:
    """A detector's settings, refused in one line: window, patience or lag given without a detector, below 1
    (lag: 0) or above the fit's ``iters`` (None: not known here; lag: above the patience), a task without a
    peak."""
    if early_stop == NONE:
        for name, value in (("es_window", window), ("es_patience", patience), ("es_lag", lag or None)):
            if value is not None:
                raise ConfigError(name, f"applies only with a detector; allowed: set early_stop to one of "
                                        f"{', '.join(DETECTORS.names())}, or leave {name} unset")
        return
    DETECTORS.get(early_stop)
    if task in NO_PEAK_TASKS:
        raise ConfigError("early_stop", f"task {task!r} fits the clean image itself (no peak to detect); allowed: "
                                        f"early_stop none, or a task with a degradation")
    for name, value in (("es_window", window), ("es_patience", patience)):
        check_int(name, value, 1, " (outputs)")
        if iters is not None and value > iters:
            raise ConfigError(name, f"{value} is above the fit's {iters} iterations; allowed: 1..{iters}")
    check_positive("es_alpha", alpha)
    if alpha >= 1:
        raise ConfigError("es_alpha", f"must be a weight in (0, 1), got {alpha!r}")
    check_int("es_lag", lag, 0, " (outputs)")
    if lag > patience:
        raise ConfigError("es_lag", f"{lag} is above es_patience {patience}: the output it returns would come after "
                                    f"the detection is confirmed; allowed: 0..{patience}")


class Watch:
    """The stopping rule of both reference notebooks (``check_stop``): a strictly lower statistic is a new
    minimum and resets the wait; ``patience`` checks without one confirm the detection, after which the
    choice is frozen. Checks start once ``first`` outputs are in (NaN statistics never count). Online, the output
    returned is ``lag`` outputs after the minimum (``es_lag``; ``returned`` is its offline twin)."""

    def __init__(self, patience: int, first: int, lag: int = 0):
        self.patience, self.first, self.lag = patience, first, lag
        self.best, self.index, self.wait, self.confirmed_at = math.inf, None, 0, None
        self.target: int | None = None  # the index of the output returned: the minimum's plus ``lag``

    def add(self, index: int, value: float) -> bool:
        """Check output ``index`` (0-based among accepted outputs); True when it is a new minimum."""
        if self.confirmed_at is not None or index + 1 < self.first or value != value:
            return False
        if value < self.best:
            self.best, self.index, self.wait, self.target = value, index, 0, index + self.lag
            return True
        self.wait += 1
        if self.wait >= self.patience:
            self.confirmed_at = index
        return False

    def returns(self, index: int) -> bool:
        """Whether output ``index`` is the one returned (for now: a later minimum moves it)."""
        return index == self.target


@dataclass(frozen=True)
class Detection:
    """Where a detector stops a fit: ``index`` into the trace (None: it never checked), ``confirmed_at`` the
    index where its patience ran out (None: not within the fit, so ``es_stop`` saves nothing)."""

    index: int | None
    confirmed_at: int | None


def detect(trace: Mapping[str, Sequence[float]], early_stop: str, window: int, patience: int,
           alpha: float = 0.1) -> Detection:
    """Replay a detector on a stored trace: the very ``Watch`` the fit ran, on the very numbers it saw."""
    entry = DETECTORS.get(early_stop)
    column = entry.column(window, alpha)
    if column not in trace:
        raise ConfigError("early_stop", f"the trace holds no column {column!r}; allowed windows "
                                        f"{', '.join(map(str, TRACE_WINDOWS))}, weights "
                                        f"{', '.join(map(str, TRACE_ALPHAS))}")
    watch = Watch(patience, window)
    for i, value in enumerate(trace[column]):
        watch.add(i, float("nan") if value is None else value)
        if watch.confirmed_at is not None:
            break
    return Detection(watch.index, watch.confirmed_at)


def returned(found: Detection, lag: int, last: int) -> int:
    """The index of the output a detection returns: ``lag`` outputs after the statistic's minimum (``es_lag``;
    at most the patience, so it is in before the confirmation), the last one where the fit ended first or the
    detector never checked."""
    if found.index is None:
        return last
    return min(found.index + lag, found.confirmed_at if found.confirmed_at is not None else last)


def scores(trace: Mapping[str, Sequence[float]], found: Detection, iters: int, lag: int = 0) -> dict[str, float]:
    """The record of a detection: ``es_iter`` (the returned output's iteration), ``psnr_es`` (the reported
    output's PSNR there), ``es_gap`` (the oracle peak of that same output minus ``psnr_es``, never negative),
    ``es_peak_width``, iterations run until confirmed and saved by stopping there; ``ypsnr_es`` where the trace
    holds Y-PSNR (SR)."""
    psnr, its = trace["psnr"], trace["it"]
    peak = max(range(len(psnr)), key=lambda i: (psnr[i], -i))
    i = returned(found, lag, len(its) - 1)
    run = its[found.confirmed_at] if found.confirmed_at is not None else iters
    out = {"es_iter": its[i], "psnr_es": psnr[i], "es_gap": psnr[peak] - psnr[i],
           "es_confirmed": float(found.confirmed_at is not None), "es_iters_run": run, "es_saved": iters - run,
           "es_peak_width": peak_width(psnr, peak)}
    if "ypsnr" in trace:
        out["ypsnr_es"] = trace["ypsnr"][i]
    return out


def peak_width(psnr: Sequence[float], peak: int) -> int:
    """Iterations whose reported output lies within ``PEAK_BAND_DB`` of its peak: the room a detector has (a
    count, not a contiguous stretch: a raw output's PSNR jitters by more than the band from step to step)."""
    return sum(1 for p in psnr if p >= psnr[peak] - PEAK_BAND_DB)


class Trace:
    """The per-iteration statistics of one image's fit, in float64: WMV at ``TRACE_WINDOWS`` (and the fit's
    own window) by running sums over a float32 ring of the last outputs, EMV at ``TRACE_ALPHAS`` (and the
    fit's own weight) by the reference recursion, and the reported output's PSNR (Y-PSNR for SR)."""

    def __init__(self, windows: Sequence[int], alphas: Sequence[float]):
        self.windows, self.alphas = sorted(set(windows)), sorted(set(alphas))
        self.ring: list[torch.Tensor] = []
        self.sums = {w: None for w in self.windows}
        self.squares = dict.fromkeys(self.windows, 0.0)
        self.ema: dict[float, torch.Tensor] = {}
        self.emv = dict.fromkeys(self.alphas, 0.0)
        self.columns: dict[str, list[float]] = {"it": [], "psnr": []}

    def add(self, it: int, out: torch.Tensor, psnr: float, ypsnr: float | None) -> None:
        """One accepted output (raw, at the perturbed input, before the step: as the reference buffers it)."""
        x = out.detach().reshape(-1).double()
        n = x.numel()
        self.ring.append(out.detach().reshape(-1).float().clone())
        self.ring = self.ring[-max(self.windows) - 1:]  # the largest window, and the output just leaving it
        sq = float(x.dot(x))
        for w in self.windows:
            self.sums[w] = x.clone() if self.sums[w] is None else self.sums[w].add_(x)
            self.squares[w] += sq
            if len(self.columns["it"]) >= w:
                self._drop(w)
            count = min(len(self.columns["it"]) + 1, w)
            var = (self.squares[w] - float(self.sums[w].dot(self.sums[w])) / count) / (count * n)
            self.columns.setdefault(f"wmv_{w}", []).append(var if count == w else math.nan)
        for a in self.alphas:
            self._emv(a, x)
        self.columns["it"].append(it)
        self.columns["psnr"].append(psnr)
        if ypsnr is not None:
            self.columns.setdefault("ypsnr", []).append(ypsnr)

    def _drop(self, w: int) -> None:
        """Take the output that left window ``w`` out of its sums (the same float64 values that went in)."""
        old = self.ring[-w - 1].double()
        self.sums[w].sub_(old)
        self.squares[w] -= float(old.dot(old))

    def _emv(self, a: float, x: torch.Tensor) -> None:
        if a not in self.ema:
            self.ema[a] = x.clone()
        else:
            delta = x - self.ema[a]
            self.ema[a] = (self.ema[a] + a * delta).clamp_(0, 1)
            self.emv[a] = (1 - a) * (self.emv[a] + a * float(delta.dot(delta)))
        self.columns.setdefault(f"emv_{a:g}", []).append(self.emv[a])

    def as_dict(self) -> dict[str, list[float]]:
        return {k: list(v) for k, v in self.columns.items()}
