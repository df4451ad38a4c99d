"""What a fit keeps of its outputs, per image: the EMA, the oracle peaks, the PSNR/SSIM curve (Fig. 11), the
outputs at chosen iterations (Fig. 12), SGLD-DIP's posterior mean and spread (Fig. 16), and the reported
metrics. The loop that produces the outputs is ``fit.py``."""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from lipsweep.fitting.config import FitConfig
from lipsweep.fitting.early_stop import DETECTORS, NONE, TRACE_ALPHAS, TRACE_WINDOWS, Detection, Trace, Watch, scores
from lipsweep.problems import metrics
from lipsweep.problems.tasks import TASKS, Problem, to_pixels

if TYPE_CHECKING:
    import torch

# The version of this module's results (lipsweep.core.versions): raise it in the commit that changes them.
ALGORITHM = 1


def no_grad(func: Callable) -> Callable:
    """``@torch.no_grad()``, importing torch at the first call (so this module and ``fit.py`` load without it)."""
    @functools.wraps(func)
    def call(*args, **kwargs):
        import torch

        with torch.no_grad():
            return func(*args, **kwargs)

    return call


@dataclass
class FitResult:
    metrics: dict[str, float]
    curve: list[dict[str, float]]
    final: np.ndarray
    ema: np.ndarray | None
    best: np.ndarray
    seconds: float
    extra: dict = field(default_factory=dict)
    ema_peak: np.ndarray | None = None  # the EMA output at its best PSNR: the image psnr_ema_peak scores (Figs. 18-19)

    def posterior_images(self) -> dict[str, np.ndarray]:
        """SGLD's posterior mean and spread as images (``paths.IMAGES`` keys); the spread is scaled so that its
        maximum (metric ``posterior_std_max``) is white. Empty without a posterior."""
        if "posterior" not in self.extra:
            return {}
        mean, std = self.extra["posterior"]
        return {"posterior_mean": mean, "posterior_std": std / max(float(std.max()), 1e-12)}

    @property
    def restored(self) -> np.ndarray:
        """The reconstruction to show: SGLD's posterior mean, the EMA output where the task uses one, else the
        final output."""
        if "posterior" in self.extra:
            return self.extra["posterior"][0]
        return self.ema if self.ema is not None else self.final


class FitOutputs:
    """Per-image bookkeeping of one fit: EMA of the output, the oracle peaks, curve.

    Two oracle peaks (both need the clean image): of the raw output (``psnr_peak``) and of the EMA output
    (``psnr_ema_peak``, what the paper and its code report: ``psnr_gt_sm`` maximised over iterations); for
    SR also the best Y-PSNR of the EMA output over iterations (``ypsnr_ema_peak``). Without an EMA the EMA
    output is the output itself."""

    def __init__(self, problem: Problem, cfg: FitConfig):
        self.problem, self.weight, self.iters = problem, cfg.ema, cfg.iters
        self.posterior = Posterior(cfg.burnin, cfg.sample_every) if cfg.burnin is not None else None
        self.wanted = list(cfg.snapshots)
        self.snapshots: dict[int, np.ndarray] = {}
        self.ema: torch.Tensor | None = None
        self.best_psnr, self.best_iter, self.best = -float("inf"), 0, None
        self.best_ema_psnr, self.best_ema_iter, self.best_ema = -float("inf"), 0, None
        self.y = TASKS.get(problem.task).y_psnr
        self.best_y = -float("inf")
        self.last: torch.Tensor | None = None
        self.psnr, self.psnr_ema = float("nan"), None
        self.curve: list[dict[str, float]] = []
        self.early = EarlyStopping(cfg) if cfg.early_stop != NONE else None

    @property
    def confirmed(self) -> bool:
        """Whether this image's detector has confirmed its stop (``es_stop`` ends the fit when all have)."""
        return self.early is not None and self.early.watch.confirmed_at is not None

    @no_grad
    def update(self, it: int, out: torch.Tensor) -> None:
        self.last = out
        if self.weight is not None:
            self.ema = out.clone() if self.ema is None else self.ema.mul_(self.weight).add_(out, alpha=1 - self.weight)
        self.psnr = metrics.psnr_torch(out, self.problem.clean)
        self.psnr_ema = metrics.psnr_torch(self.ema, self.problem.clean) if self.ema is not None else None
        if self.psnr > self.best_psnr:
            self.best_psnr, self.best_iter, self.best = self.psnr, it, out.clone()
        smooth, p = (self.ema, self.psnr_ema) if self.ema is not None else (out, self.psnr)
        if p > self.best_ema_psnr:
            self.best_ema_psnr, self.best_ema_iter = p, it
            self.best_ema = smooth.clone() if self.ema is not None else self.best
        y = metrics.y_psnr_torch(smooth, self.problem.clean) if self.y else None
        if y is not None:
            self.best_y = max(self.best_y, y)
        if self.early is not None:
            self.early.add(it, out, smooth, p, y)
        if self.posterior is not None:
            self.posterior.add(it, out)
        while self.wanted and self.wanted[0] <= it:  # a backtracked iteration: its restored state, shown here
            self.snapshots[self.wanted.pop(0)] = to_pixels(smooth)

    def record(self, it: int, loss: float) -> None:
        """A curve point: the training loss and the output's PSNR and SSIM (Fig. 11), of the EMA output too
        where the task keeps one, and of the posterior mean so far (SGLD)."""
        clean = self.problem.clean
        point = {"iter": it, "loss": loss, "psnr": self.psnr, "ssim": metrics.ssim_torch(self.last, clean)}
        if self.psnr_ema is not None:
            point.update(psnr_ema=self.psnr_ema, ssim_ema=metrics.ssim_torch(self.ema, clean))
        if self.posterior is not None and self.posterior.count:
            point["psnr_posterior"] = metrics.psnr_torch(self.posterior.mean(), clean)
        self.curve.append(point)

    @no_grad
    def result(self, seconds: float, fallback: Callable[[], torch.Tensor]) -> FitResult:
        """``fallback`` gives an output only if every step backtracked (no output was ever kept)."""
        last = self.last if self.last is not None else fallback()
        best = self.best if self.best is not None else last
        best_ema = self.best_ema if self.best_ema is not None else best
        final, ema = to_pixels(last), to_pixels(self.ema) if self.ema is not None else None
        clean, ema_peak = to_pixels(self.problem.clean), to_pixels(best_ema)
        found = {**score(self.problem, final, ema, to_pixels(best)), "peak_iter": self.best_iter,
                 "psnr_ema_peak": metrics.psnr(ema_peak, clean), "ema_peak_iter": self.best_ema_iter}
        if self.y:
            found["ypsnr_ema_peak"] = self.best_y
        extra = {"outputs_at": {**self.snapshots, **{it: final for it in self.wanted}},
                 "clean": clean, "observation": to_pixels(self.problem.baseline)}
        if self.early is not None:
            found.update(self.early.result(self.iters, clean))
            extra.update(es_image=self.early.image(), es_trace=self.early.trace.as_dict())
        if self.posterior is not None:
            mean, std = self.posterior.result(last)
            found.update(psnr_posterior=metrics.psnr(mean, clean), ssim_posterior=metrics.ssim(mean, clean),
                         posterior_std_max=float(std.max()), posterior_samples=self.posterior.count)
            extra["posterior"] = (mean, std)
        return FitResult(metrics=found, curve=self.curve, final=final, ema=ema, best=to_pixels(best), seconds=seconds,
                         extra=extra, ema_peak=ema_peak)


class EarlyStopping:
    """One image's detector (``early_stop.py``): the trace of every output, the watch on its column, and the
    reported output at each new minimum (the reconstruction the detector returns; issue 29)."""

    def __init__(self, cfg: FitConfig):
        entry = DETECTORS.get(cfg.early_stop)
        self.trace = Trace((*TRACE_WINDOWS, cfg.es_window), (*TRACE_ALPHAS, cfg.es_alpha))
        self.column = entry.column(cfg.es_window, cfg.es_alpha)
        self.watch = Watch(cfg.es_patience, cfg.es_window, cfg.es_lag)
        self.chosen: torch.Tensor | None = None
        self.latest: torch.Tensor | None = None  # the reported output now (returned where the fit ends first)

    def add(self, it: int, out: torch.Tensor, smooth: torch.Tensor, psnr: float, ypsnr: float | None) -> None:
        self.trace.add(it, out, psnr, ypsnr)
        column = self.trace.columns[self.column]
        index, self.latest = len(column) - 1, smooth
        if self.watch.add(index, column[-1]):
            self.chosen = None
        if self.watch.returns(index):
            self.chosen = smooth.clone()

    def image(self) -> np.ndarray:
        """The returned reconstruction (``early_stop.returned``): the last one where the fit ended before it came
        or before the first check (a fit shorter than the window)."""
        return to_pixels(self.chosen if self.chosen is not None else self.latest)

    def result(self, iters: int, clean: np.ndarray) -> dict[str, float]:
        found = scores(self.trace.columns, Detection(self.watch.index, self.watch.confirmed_at), iters, self.watch.lag)
        return {**found, "ssim_es": metrics.ssim(self.image(), clean)}


class SharedDetection:
    """The iteration whose weights the detectors return (``es_mask``). One network fits every image of a fit
    (Algorithm 2), so one detection must serve them all: the ``Watch`` on the mean of the images' statistics
    (the statistic of the whole output, images weighted alike), returned ``es_lag`` outputs after its minimum.
    With one image that is the image's own detection, by construction."""

    def __init__(self, early: Sequence[EarlyStopping], cfg: FitConfig):
        self.early = list(early)
        self.watch = Watch(cfg.es_patience, cfg.es_window, cfg.es_lag)
        self.chosen_at = 0  # the iteration of the returned weights (0: none yet)

    def add(self, it: int) -> bool:
        """After every image's detector saw iteration ``it``: True when its weights are the ones returned."""
        columns = [e.trace.columns[e.column] for e in self.early]
        index = len(columns[0]) - 1
        if self.watch.add(index, sum(c[-1] for c in columns) / len(columns)):
            self.chosen_at = 0
        if self.watch.returns(index):
            self.chosen_at = it
        return self.chosen_at == it


class Posterior:
    """SGLD-DIP's reconstruction (Cheng et al. 2019, paper Fig. 16): the mean of the outputs sampled every
    ``every`` iterations after ``burnin``, and their per-pixel standard deviation (the posterior's spread)."""

    def __init__(self, burnin: int, every: int):
        self.burnin, self.every = burnin, every
        self.count = 0
        self.total: torch.Tensor | None = None
        self.squares: torch.Tensor | None = None

    @no_grad
    def add(self, it: int, out: torch.Tensor) -> None:
        if it <= self.burnin or (it - self.burnin) % self.every:
            return
        x = out.detach().double()
        self.total = x.clone() if self.total is None else self.total.add_(x)
        self.squares = x * x if self.squares is None else self.squares.add_(x * x)
        self.count += 1

    def mean(self) -> torch.Tensor:
        return (self.total / self.count).float()

    def result(self, last: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        """Mean and std images; with no sample yet (a fit shorter than burn-in + every), the last output."""
        if not self.count:
            return to_pixels(last), np.zeros_like(to_pixels(last))
        mean = self.total / self.count
        var = (self.squares / self.count - mean * mean).clamp_min(0)
        return to_pixels(mean.float()), to_pixels(var.sqrt().float())  # std <= 0.5: the clamp to [0, 1] is a no-op


def score(problem: Problem, final: np.ndarray, ema: np.ndarray | None, best: np.ndarray) -> dict[str, float]:
    """The reported metrics (scikit-image). ``psnr_peak`` is an oracle: it needs the clean image."""
    clean = to_pixels(problem.clean)
    smooth = ema if ema is not None else final
    out = {
        "psnr_final": metrics.psnr(final, clean),
        "ssim_final": metrics.ssim(final, clean),
        "psnr_ema": metrics.psnr(smooth, clean),
        "ssim_ema": metrics.ssim(smooth, clean),
        "psnr_peak": metrics.psnr(best, clean),
    }
    if not problem.baseline.equal(problem.clean):  # task fit observes the target itself: no baseline
        out["psnr_observation"] = metrics.psnr(to_pixels(problem.baseline), clean)
    if TASKS.get(problem.task).y_psnr:
        out["ypsnr_final"] = metrics.y_psnr(final, clean)
        out["ypsnr_ema"] = metrics.y_psnr(smooth, clean)
        out["ypsnr_peak"] = metrics.y_psnr(best, clean)
        out["ypsnr_observation"] = metrics.y_psnr(to_pixels(problem.baseline), clean)
    return out
