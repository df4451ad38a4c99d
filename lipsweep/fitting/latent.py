"""Latent optimisation: how a *pretrained* generator G is used as a prior (paper Section 5, Table 1;
docs/science.md section 2: Adam at lr 0.01 over the latent, 1500 iterations).

G's weights never move: only z does (Bora et al. 2017). The estimate x01 = (G(z) + 1) / 2 goes through the
task's operator, so every task in ``lipsweep.problems.tasks`` works, compressive sensing (``cs``) and inpainting alike.
Restarts run as one batch; each restart's loss is its own and they are summed, so every restart follows
exactly the Adam trajectory it would follow alone (Adam is elementwise).

Objectives:
- ``ls``: mean squared residual over all measurements (``Problem.loss`` per restart; Bora et al. 2017).
- ``mom``: Jalal et al. 2020's median-of-means tournament, as their code (csgm-robust-neurips,
  ``src/celebA_estimators.py: mom_estimator``) and the paper's script (VITA-Group/Chasing-Better-DIPs,
  ``Compressed_sensing_GAN/src/Eval_sparse_PGAN_on_CS.py: mom_obj``) run it: a second latent zg per
  restart; per measurement d_i = (a_i G(zf) - y_i)^2 - (a_i G(zg) - y_i)^2; the measurements are split
  into blocks, d is averaged per block and the block at rank K // 2 of the sorted block means is taken
  (the upper median); zf takes an Adam descent step on it, then zg (its own Adam) an ascent step on the
  same quantity recomputed with the new zf. Both latents start N(0, I).

Not copied: csgm-robust-neurips returns the mean of zf over the last 200 steps and picks the restart by the
tournament value against the last zg (the paper's script keeps the final zf, one restart); the paper's
inpainting script seeds ``backward`` with the per-pixel loss itself, i.e. descends sum(r^4) / 2, not LS.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from lipsweep.core.errors import ConfigError, check_choice, check_int, check_positive
from lipsweep.problems import metrics
from lipsweep.problems.tasks import Problem, stable_seed, to_pixels

# The version of this module's results (lipsweep.core.versions): raise it in the commit that changes them.
ALGORITHM = 1

OBJECTIVES = ("mom", "ls")


@dataclass(frozen=True)
class LatentConfig:
    """The paper's script's settings: 1500 Adam steps at lr 0.01 on each latent, one restart, MOM (its
    partition is redrawn per evaluation: ``reshuffle=True``).

    ``blocks``: MOM blocks. Jalal's code fixes the block *size* (``--mom-batch-size 20``, also the paper's
    script), i.e. 50 blocks at m = 1000; a count keeps the median block free of outliers when m changes
    (it needs blocks > 2 * outliers). Rows beyond blocks * (m // blocks) sit in no block (their truncation).
    ``reshuffle``: a fresh random partition at every MOM evaluation, as the paper's script (``mom_obj``
    calls ``torch.randperm`` each time); False keeps one partition per fit, as csgm-robust-neurips keeps
    one per image."""

    iters: int = 1500
    lr: float = 0.01
    restarts: int = 1
    objective: str = "mom"
    blocks: int = 50
    reshuffle: bool = False
    curve_every: int = 50

    def __post_init__(self) -> None:
        for name in ("iters", "restarts", "blocks", "curve_every"):
            check_int(name, getattr(self, name), 1)
        check_positive("lr", self.lr)
        check_choice("objective", self.objective, OBJECTIVES)
        if not isinstance(self.reshuffle, bool):
            raise ConfigError("reshuffle", f"must be true or false, got {self.reshuffle!r}")


@dataclass
class LatentResult:
    """``metrics`` are for the restart with the lowest final measurement loss (obtainable) and, suffixed
    ``_oracle``, for the one closest to the clean image (needs the clean image: never obtainable)."""

    metrics: dict[str, float]
    restored: np.ndarray  # HxWxC in [0, 1], the chosen restart
    restored_oracle: np.ndarray
    curve: list[dict[str, float]]
    seconds: float
    z: torch.Tensor  # the chosen restart's latent, shape [latent]


@dataclass
class Descent:
    """Where ``descend`` ended: both latents ([restarts, latent]), G's output in [0, 1] at zf, the curve."""

    zf: torch.Tensor
    zg: torch.Tensor
    output: torch.Tensor
    curve: list[dict[str, float]]


def initial_latents(latent: int, restarts: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """zf and zg ([restarts, latent], N(0, I)); restart r depends only on (seed, r), so a batch of restarts
    starts where the same restarts run one by one would."""
    check_int("latent", latent, 1)
    rows = []
    for r in range(restarts):
        g = torch.Generator().manual_seed(stable_seed("latent", seed, r))
        rows.append(torch.randn(2, latent, generator=g))
    both = torch.stack(rows)
    return both[:, 0].contiguous(), both[:, 1].contiguous()


def partition(m: int, blocks: int, g: torch.Generator) -> torch.Tensor:
    """A random split of m measurement indices into ``blocks`` rows of m // blocks (Jalal's truncation)."""
    size = m // blocks
    return torch.randperm(m, generator=g)[: size * blocks].view(blocks, size)


def median_of_means(values: torch.Tensor, parts: torch.Tensor) -> torch.Tensor:
    """Per restart ([R, m] -> [R]): the mean of the block whose mean has rank K // 2 among the K blocks."""
    means = values[:, parts.to(values.device)].mean(-1)
    idx = torch.argsort(means.detach(), dim=1, stable=True)[:, means.shape[1] // 2]
    return means.gather(1, idx[:, None]).squeeze(1)


def squared_residuals(problem: Problem, measured: torch.Tensor) -> torch.Tensor:
    """(A x - y)^2 per measurement from ``measured`` = A x, one row per restart: [R, m]."""
    return ((measured - problem.observation) ** 2).flatten(1)


def measurement_loss(problem: Problem, measured: torch.Tensor, parts: torch.Tensor | None) -> torch.Tensor:
    """What picks a restart without the clean image: the mean squared residual (``ls``, ``parts`` None), or
    its median-of-means over the fit's partition (``mom``: as robust to outliers as the fit itself)."""
    sq = squared_residuals(problem, measured)
    return sq.mean(1) if parts is None else median_of_means(sq, parts)


def mom_partition(problem: Problem, cfg: LatentConfig, seed: int) -> torch.Tensor | None:
    """The fit's fixed partition (None for ``ls``); seeded by ``seed`` alone, so all restarts share it."""
    if cfg.objective != "mom":
        return None
    m = problem.observation.numel()
    if cfg.blocks > m:
        raise ConfigError("blocks", f"must be <= the number of measurements {m}, got {cfg.blocks}")
    return partition(m, cfg.blocks, torch.Generator().manual_seed(stable_seed("mom", seed)))


def _measure(g: nn.Module, problem: Problem, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """G's output in [0, 1] and its measurements A x, both with their graph back to z."""
    x01 = (g(z) + 1.0) / 2.0
    return x01, problem.operator(x01)


def _step(opt: torch.optim.Optimizer, z: torch.Tensor, loss: torch.Tensor) -> None:
    """Adam on z alone: ``autograd.grad`` w.r.t. z leaves G's parameters without gradients."""
    (z.grad,) = torch.autograd.grad(loss, [z])
    opt.step()


def _point(i: int, problem: Problem, x01: torch.Tensor, measured: torch.Tensor,
           parts: torch.Tensor | None) -> dict:
    """A curve entry: the loss and per-pixel [-1, 1] MSE of the restart with the lowest loss so far."""
    with torch.no_grad():
        loss = measurement_loss(problem, measured, parts)
        r = int(torch.argmin(loss))
        mse = 4.0 * torch.mean((x01[r] - problem.clean[0]) ** 2)
    return {"iteration": i, "loss": float(loss[r]), "mse": float(mse), "restart": r}


def descend(g: nn.Module, problem: Problem, zf0: torch.Tensor, zg0: torch.Tensor, cfg: LatentConfig,
            seed: int) -> Descent:
    """``cfg.iters`` Adam steps from (zf0, zg0), all restarts in one batch; zg only moves for ``mom``.

    Curve entry i is the state after i steps. A MOM step reuses G(zf) and A G(zf), with their graph, from
    the end of the previous step (the same values Jalal's code recomputes), so it costs one generator pass
    and one product with A per latent, each with its backward."""
    fixed = mom_partition(problem, cfg, seed)
    shuffler = torch.Generator().manual_seed(stable_seed("mom reshuffle", seed))
    m = problem.observation.numel()
    parts = (lambda: partition(m, cfg.blocks, shuffler)) if cfg.reshuffle else (lambda: fixed)
    zf, zg = zf0.clone().requires_grad_(True), zg0.clone().requires_grad_(True)
    opt_f, opt_g = torch.optim.Adam([zf], lr=cfg.lr), torch.optim.Adam([zg], lr=cfg.lr)
    xf, af = _measure(g, problem, zf)
    ag = _measure(g, problem, zg)[1] if fixed is not None else None
    curve = []
    for i in range(cfg.iters):
        if i % cfg.curve_every == 0:
            curve.append(_point(i, problem, xf.detach(), af.detach(), fixed))
        if fixed is None:
            _step(opt_f, zf, squared_residuals(problem, af).mean(1).sum())
            xf, af = _measure(g, problem, zf)
            continue
        sq_g = squared_residuals(problem, ag.detach())
        _step(opt_f, zf, median_of_means(squared_residuals(problem, af) - sq_g, parts()).sum())
        xf, af = _measure(g, problem, zf)
        sq_f = squared_residuals(problem, af.detach())
        _step(opt_g, zg, -median_of_means(sq_f - squared_residuals(problem, ag), parts()).sum())
        ag = _measure(g, problem, zg)[1]
    curve.append(_point(cfg.iters, problem, xf.detach(), af.detach(), fixed))
    return Descent(zf.detach(), zg.detach(), xf.detach(), curve)


@contextlib.contextmanager
def _inference(g: nn.Module) -> Iterator[None]:
    """G in eval mode for the fit (batch-independent: restarts must not share BN statistics), then every
    submodule's own train/eval flag back as it was."""
    modes = [(m, m.training) for m in g.modules()]
    g.eval()
    try:
        yield
    finally:
        for module, training in modes:
            module.training = training


def _scores(problem: Problem, x01: torch.Tensor, loss: torch.Tensor, r: int, suffix: str) -> dict:
    clean = to_pixels(problem.clean)
    out = to_pixels(x01[r:r + 1])
    return {f"mse{suffix}": float(4.0 * torch.mean((x01[r] - problem.clean[0]) ** 2)),
            f"psnr{suffix}": metrics.psnr(out, clean), f"ssim{suffix}": metrics.ssim(out, clean),
            f"loss{suffix}": float(loss[r]), f"restart{suffix}": r}


def _observation_scores(problem: Problem) -> dict:
    """The observation's own error where it is an image (inpainting, denoising); none for CS (a vector)."""
    if problem.observation.dim() != 4:
        return {}
    return {"mse_observation": float(4.0 * torch.mean((problem.baseline - problem.clean) ** 2)),
            "psnr_observation": metrics.psnr(to_pixels(problem.baseline), to_pixels(problem.clean))}


def fit_latent(g: nn.Module, problem: Problem, latent: int, cfg: LatentConfig, seed: int) -> LatentResult:
    """Fit z so that G(z) explains ``problem.observation``; G ([B, latent] -> [B, C, H, W] in [-1, 1]) is used
    as given and left unchanged (its train/eval flags are restored). The restart is chosen by the final
    measurement loss; ``*_oracle`` metrics take the restart nearest the clean image. ``mse`` is per pixel in
    the [-1, 1] scale (the paper's Table 1 metric, 4x the [0, 1] MSE), on G's raw output as the paper's
    script computes it; psnr/ssim clip to [0, 1]."""
    start = time.perf_counter()
    device = problem.clean.device
    zf0, zg0 = initial_latents(latent, cfg.restarts, seed)
    with _inference(g):
        run = descend(g, problem, zf0.to(device), zg0.to(device), cfg, seed)
    with torch.no_grad():
        loss = measurement_loss(problem, problem.operator(run.output), mom_partition(problem, cfg, seed))
        mse = 4.0 * ((run.output - problem.clean) ** 2).flatten(1).mean(1)
    chosen, oracle = int(torch.argmin(loss)), int(torch.argmin(mse))
    scores = {**_scores(problem, run.output, loss, chosen, ""), **_scores(problem, run.output, loss, oracle, "_oracle"),
              **_observation_scores(problem)}
    return LatentResult(scores, to_pixels(run.output[chosen:chosen + 1]), to_pixels(run.output[oracle:oracle + 1]),
                        run.curve, time.perf_counter() - start, run.zf[chosen].clone())
