"""Fitting a prior to one observation: the DIP loop, written once for every task and every mask.

``fit`` is the loop (Adam, input noise, backtracking, a fixed pruning mask, SGLD's weight noise; what it keeps
of the outputs is ``outputs.py``); ``prepare`` turns a ``RunConfig`` into the network, input and problem it needs; ``run`` does both.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import numpy as np

from lipsweep.core.errors import ConfigError
from lipsweep.fitting.config import FitConfig, RunConfig
from lipsweep.fitting.outputs import FitOutputs, FitResult, SharedDetection, no_grad
from lipsweep.priors import build_model, conv_weights, counts, make_input
from lipsweep.problems.images import load_image, load_mask_image
from lipsweep.problems.tasks import Problem, make_problem, stable_seed

if TYPE_CHECKING:
    import torch
    from torch import nn

# The version of this module's results (lipsweep.core.versions): raise it in the commit that changes them.
ALGORITHM = 1

Mask = Mapping[str, "torch.Tensor"]


@dataclass(frozen=True)
class Step:
    """What the per-step callback sees. ``psnr`` uses the clean image: for monitoring, never for decisions."""

    iteration: int
    loss: float
    psnr: float
    psnr_ema: float | None


def resolve_device(device: str) -> torch.device:
    import torch

    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device", "cuda was requested but no CUDA device is available; allowed here: auto, cpu")
    return torch.device(device)


def apply_mask(model: nn.Module, mask: Mask) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Zero pruned weights in place; returns (weight, float mask) pairs used to mask gradients each step."""
    import torch

    weights = conv_weights(model)
    unknown = sorted(set(mask) - set(weights))
    if unknown:
        raise ConfigError("mask", f"names not in the model: {', '.join(unknown[:5])}; model convs: "
                                  f"{', '.join(list(weights)[:5])}, ...")
    pairs = []
    with torch.no_grad():
        for name, m in mask.items():
            w = weights[name]
            if tuple(m.shape) != tuple(w.shape):
                raise ConfigError("mask", f"{name} has shape {tuple(m.shape)}, the model's weight {tuple(w.shape)}")
            mf = m.to(device=w.device, dtype=w.dtype)
            w.mul_(mf)
            pairs.append((w, mf))
    return pairs


def make_optimizer(params: list[nn.Parameter], lr: float) -> torch.optim.Optimizer:
    """Adam; the fused kernel where the build has it (+23% at 64 px on CPU), same maths."""
    import torch

    try:
        return torch.optim.Adam(params, lr=lr, fused=True)
    except (RuntimeError, TypeError):
        return torch.optim.Adam(params, lr=lr)


class Backtrack:
    """DIP's backtracking: every ``backtrack_every`` steps compare PSNR(A f(z), y) with the last check; a
    drop of more than ``backtrack_db`` restores the parameters saved there and skips the step. That PSNR is
    -10 log10(mean loss): free, and it needs no clean image."""

    def __init__(self, params: list[nn.Parameter], cfg: FitConfig, n_images: int):
        self.params, self.every, self.db, self.n_images = params, cfg.backtrack_every, cfg.backtrack_db, n_images
        self.saved = [p.detach().clone() for p in params]
        self.saved_loss = float("nan")  # the loss of the saved (last accepted) parameters
        self.last: float | None = None
        self.count = 0

    @no_grad
    def rejects(self, it: int, loss: float) -> bool:
        if it % self.every:
            return False
        obs_psnr = -10.0 * np.log10(max(loss / self.n_images, 1e-12))
        if self.last is not None and obs_psnr < self.last - self.db:
            for p, keep in zip(self.params, self.saved):
                p.copy_(keep)
            self.count += 1
            return True
        self.last, self.saved_loss = obs_psnr, loss
        for p, keep in zip(self.params, self.saved):
            keep.copy_(p)
        return False


def _forward_backward(model: nn.Module, inputs: Sequence[torch.Tensor], problems: Sequence[Problem],
                      reg_noise_std: float, noise: list[torch.Tensor],
                      gen: torch.Generator) -> tuple[list[torch.Tensor], float]:
    """One forward pass per input (z plus fresh input noise), the summed DIP loss, its gradients."""
    feeds = inputs if reg_noise_std == 0 else [z + n.normal_(generator=gen) * reg_noise_std
                                               for z, n in zip(inputs, noise)]
    outs = [model(x) for x in feeds]
    shared = len(inputs) == 1
    loss = sum(p.loss(outs[0 if shared else i]) for i, p in enumerate(problems))
    loss.backward()
    return outs, loss.item()


def update_step(opt: torch.optim.Optimizer, pairs: list, model: nn.Module, cfg: FitConfig, gen: torch.Generator,
            sanitize: bool = False) -> None:
    """Mask the gradients of pruned weights, take the Adam step, then (SGLD) perturb the kept weights.

    ``sanitize`` (a mask empties a whole conv): the layers behind it carry a constant, and BatchNorm of a
    constant scales gradients by 1/sqrt(eps) per layer until they overflow; non-finite entries are zeroed
    (a masked NaN would stay NaN and un-zero a pruned weight)."""
    if sanitize:
        import torch

        for p in model.parameters():
            if p.grad is not None:
                torch.nan_to_num_(p.grad, nan=0.0, posinf=0.0, neginf=0.0)
    for w, m in pairs:
        w.grad.mul_(m)
    opt.step()
    if cfg.param_noise > 0:
        _perturb(model, pairs, cfg.param_noise * cfg.lr, gen)


def observe(trackers: list[FitOutputs], it: int, outs: list[torch.Tensor], loss: float, cfg: FitConfig,
             callback: Callable[[Step], None] | None) -> None:
    """EMA, oracle peak and curve per image; the per-step callback (monitoring only)."""
    for i, t in enumerate(trackers):
        t.update(it, outs[0 if len(outs) == 1 else i].detach())
    if it % cfg.curve_every == 0 or it == cfg.iters:
        for t in trackers:
            t.record(it, loss)
    if callback is not None:
        t0 = trackers[0]
        callback(Step(it, loss, t0.psnr, t0.psnr_ema))


def end_early(trackers: list[FitOutputs], it: int, loss: float) -> None:
    """``es_stop``: every detector confirmed its stop, so the fit ends here (the iterations left are the
    saving, ``es_saved``); the curve gets its last point at this iteration."""
    for t in trackers:
        if not t.curve or t.curve[-1]["iter"] != it:
            t.record(it, loss)


def fit_many(model: nn.Module, inputs: Sequence[torch.Tensor], problems: Sequence[Problem], cfg: FitConfig, *,
             seed: int = 0, mask: Mask | None = None, callback: Callable[[Step], None] | None = None,
             snapshot_at: Sequence[int] = (), keep_detected: bool = False) -> list[FitResult]:
    """Fit one network to several observations at once (Algorithm 2: loss summed over images).

    ``inputs`` has one z per problem, or a single z shared by all (the paper's multi-image setting:
    one forward pass serves every image). The model starts from its current weights and is left at the
    final step. With ``mask``, pruned conv weights are zeroed and their gradients masked every step, so
    Adam's moments for them stay zero and the weights stay exactly zero (checked at the end).
    ``snapshot_at`` iterations get a copy of the full state (weights, biases, BN) after that step, for
    weight rewinding; they land in ``results[0].extra["snapshots"]``. A backtracked step counts as its
    restored state: its snapshot and (on the last step) ``loss_final`` are those of the last accepted
    parameters, never of the rejected spike (the stop rule reads ``loss_final``). ``keep_detected`` (a
    detector on; ``es_mask``): the weights at the images' shared detection (``SharedDetection``) land in
    ``results[0].extra["detected_state"]``, its iteration in ``["detected_iter"]``.
    """
    import torch

    if len(inputs) not in (1, len(problems)):
        raise ValueError("inputs must hold one z, or one per problem")
    pairs = apply_mask(model, mask) if mask else []
    empty = [name for name, m in (mask or {}).items() if not bool(m.any())]  # whole convs pruned away
    opt = make_optimizer(list(model.parameters()), cfg.lr)
    gen = torch.Generator(device=inputs[0].device).manual_seed(stable_seed("reg_noise", seed))
    noise = [torch.empty_like(z) for z in inputs]
    trackers = [FitOutputs(p, cfg) for p in problems]
    backtrack = Backtrack(list(model.parameters()), cfg, len(problems)) if cfg.backtrack else None
    snapshots: dict[int, dict[str, torch.Tensor]] = {}
    shared = SharedDetection([t.early for t in trackers], cfg) if keep_detected else None
    detected = None
    model.train()
    loss = float("nan")
    start = time.perf_counter()
    for it in range(1, cfg.iters + 1):
        opt.zero_grad(set_to_none=True)
        outs, loss = _forward_backward(model, inputs, problems, cfg.reg_noise_std, noise, gen)
        rejected = backtrack is not None and backtrack.rejects(it, loss)
        if rejected:  # the model is back at the last accepted parameters: report their loss
            loss = backtrack.saved_loss
        else:  # observed before the step: the weights now are those that made these outputs
            observe(trackers, it, outs, loss, cfg, callback)
            if shared is not None and shared.add(it):
                detected = state_copy(model)
            update_step(opt, pairs, model, cfg, gen, sanitize=bool(empty))
        if it in snapshot_at:  # after a backtrack here, theta_j is the restored (last accepted) state
            snapshots[it] = state_copy(model)
        if not rejected and cfg.es_stop and it >= max(snapshot_at, default=0) and all(t.confirmed for t in trackers):
            end_early(trackers, it, loss)
            break
    seconds = time.perf_counter() - start
    check_masked_zero(pairs)
    results = [t.result(seconds, lambda: model(inputs[0]).detach()) for t in trackers]
    for r in results:  # ``it``: the iterations run, fewer than cfg.iters where es_stop ended the fit
        r.metrics.update(loss_final=loss, backtracks=backtrack.count if backtrack else 0, iters=it,
                         empty_layers=len(empty), seconds=seconds, iters_per_second=it / max(seconds, 1e-12))
    results[0].extra["snapshots"] = snapshots
    if shared is not None:  # where the fit ended before the returned output (or the first check): the final weights
        results[0].extra["detected_state"] = detected if shared.chosen_at else state_copy(model)
        results[0].extra["detected_iter"] = shared.chosen_at or it
    return results


def state_copy(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def fit(model: nn.Module, z: torch.Tensor, problem: Problem, cfg: FitConfig, *, seed: int = 0,
        mask: Mask | None = None, callback: Callable[[Step], None] | None = None,
        snapshot_at: Sequence[int] = ()) -> FitResult:
    """Fit ``model`` to one observation (see ``fit_many``)."""
    return fit_many(model, [z], [problem], cfg, seed=seed, mask=mask, callback=callback, snapshot_at=snapshot_at)[0]


@no_grad
def _perturb(model: nn.Module, pairs: list[tuple[torch.Tensor, torch.Tensor]], std: float,
             gen: torch.Generator) -> None:
    """SGLD-DIP (Cheng et al. 2019): Gaussian noise on conv weights after each step, pruned weights excepted."""
    import torch

    masks = {id(w): m for w, m in pairs}
    for w in conv_weights(model).values():
        noise = torch.randn(w.shape, generator=gen, device=w.device) * std
        w.add_(noise * masks[id(w)] if id(w) in masks else noise)


def check_masked_zero(pairs: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
    import torch

    for w, m in pairs:
        if torch.count_nonzero(w.detach()[m == 0]) != 0:
            raise RuntimeError("a pruned weight became non-zero during the fit")


@dataclass
class Prepared:
    model: nn.Module
    z: torch.Tensor
    problem: Problem
    notes: tuple[str, ...] = ()


def prepare(cfg: RunConfig) -> Prepared:
    """Image, observation, theta_0 and z for a run; all of it fixed by the config and seed."""
    device = resolve_device(cfg.device)
    pc = cfg.problem
    image = load_image(pc.image, pc.size, multiple=cfg.model.granularity, channels=cfg.model.out_channels)
    h, w = image.pixels.shape[:2]
    keep = load_mask_image(pc.inpaint_mask, (h, w), pc.size, cfg.model.granularity,
                           original=image.original) if pc.inpaint_mask else None
    problem = make_problem(pc.task, image.pixels, cfg.seed, keep, pc.target)
    problem = replace(problem, operator=problem.operator.to(device), observation=problem.observation.to(device),
                      clean=problem.clean.to(device), baseline=problem.baseline.to(device))
    model = build_model(cfg.model, cfg.seed).to(device)
    z = make_input(cfg.model, h, w, stable_seed("input", cfg.seed)).to(device)
    return Prepared(model, z, problem, image.notes)


def run(cfg: RunConfig, mask: Mask | None = None, callback: Callable[[Step], None] | None = None,
        prep: Prepared | None = None) -> tuple[FitResult, Prepared]:
    """Fit one config (preparing it unless ``prep`` is given, e.g. to validate before printing anything)."""
    from lipsweep.core.platforms import computing

    prep = prep if prep is not None else prepare(cfg)
    with computing(cfg.threads, prep.z.device.type, cfg.deterministic) as platform:
        result = fit(prep.model, prep.z, prep.problem, cfg.fit, seed=cfg.seed, mask=mask, callback=callback)
    result.extra["platform"] = platform.as_dict()
    c = counts(prep.model)
    result.metrics.update(params=c["params"], nonzero_params=c["nonzero_params"], conv_weights=c["conv_weights"],
                          height=prep.problem.clean.shape[2], width=prep.problem.clean.shape[3])
    return result, prep
