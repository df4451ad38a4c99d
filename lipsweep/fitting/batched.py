"""k seeds of one configuration fitted as one batched computation (issue 16, item 5: seeds batched on one GPU).

Approach: vmap over stacked module state. Each seed keeps its own network (theta_0 of ``build_model(seed)``);
every step the k networks' parameters are stacked with ``torch.stack`` (differentiable, so each network's own
leaves receive its gradient) and one ``torch.func.vmap`` of ``torch.func.functional_call`` runs the k forward
passes at once. vmap's convolution rule folds the seed dimension into the channels and calls one grouped
convolution (groups = k), so the GPU runs k-times wider kernels instead of k launches: the grouped-convolution
formulation, without rewriting any prior's forward (``priors/dip_net.py`` and ``deep_decoder_net.py`` are used as they
are). BatchNorm (train mode) sees each seed's own batch of one, so no statistics are shared across seeds; the
running statistics are stacked buffers, written back to each network at the end.

Everything after the forward pass is per seed and is ``fit.py``'s own code: the loss on the seed's own
observation (its noise, its Bernoulli inpainting mask), its own Adam (``make_optimizer``: its own moments and
step count), gradient masking and SGLD noise (``fit.update_step``, from the seed's own generator), backtracking
(``fit.Backtrack``: a seed whose loss spiked restores only its own parameters and skips only its own Adam
step) and the outputs (``outputs.FitOutputs``: EMA, peaks, curves). The seeds share nothing, so the gradient
of the summed loss w.r.t. seed i's parameters is seed i's own gradient: a batched fit follows the k separate
fits up to float summation order (grouped vs single convolutions): in float64 to ~1e-9 dB (tests/test_batched.py).
In float32 DIP + Adam amplifies that order noise (Adam turns the rounding noise of mathematically zero
gradients, e.g. conv biases before BatchNorm, into steps of size lr): batched and separate fits then differ
as much as 1- and 2-thread fits do (0.01-0.6 dB psnr_final at 30-60 steps, tiny nets), so a batched result
is a different (equally valid) float result, to be keyed apart from a separate one (like ``threads``).

CPU: batching measured 0.36-0.70x the throughput of k separate fits there (a 1-thread convolution gets no
wider for free), so the sweep keeps one seed per 1-thread trial on CPU and batches seeds only on CUDA.
``fit_seeds`` accepts CPU (the tests check equality there at tiny size) but gains nothing there.

CUDA only, off by default: ``bf16`` (autocast of the forward pass; the loss, EMA and metrics stay fp32) and
``channels_last`` (the k inputs laid out so that vmap's folded 1 x kC x H x W input is NHWC; vmap cannot take
memory-format arguments). Conv weights keep the plain layout: with input and weight both channels-last,
vmap's convolution rule returns wrong weight gradients (torch 2.13, CPU), so ``fit_batch`` first compares one
step's gradients with and without the layout on the device at hand and refuses it if they differ. Neither
flag reproduces the fp32 fits bit for bit: ``benchmarks/gpu_seeds.py`` measures their PSNR change (target
<= 0.05 dB) and speed.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

import torch
from torch import nn
from torch.func import functional_call, vmap

from lipsweep.core.errors import ConfigError
from lipsweep.core.platforms import computing
from lipsweep.fitting.config import FitConfig, RunConfig
from lipsweep.fitting.fit import (
    Backtrack,
    Mask,
    Prepared,
    Step,
    apply_mask,
    check_masked_zero,
    make_optimizer,
    observe,
    prepare,
    resolve_device,
    update_step,
)
from lipsweep.fitting.outputs import FitOutputs, FitResult
from lipsweep.priors import counts
from lipsweep.problems.tasks import Problem, stable_seed

__all__ = ["fit_batch", "fit_seeds"]


def _seed_stack_input(feeds: Sequence[torch.Tensor], channels_last: bool) -> torch.Tensor:
    """k inputs (1xCxHxW) as kx1xCxHxW; with ``channels_last`` stored (1, H, W, k, C), which is NHWC once vmap
    folds the seeds into the channels (1 x kC x H x W)."""
    if not channels_last:
        return torch.stack(list(feeds))
    return torch.stack([x.permute(0, 2, 3, 1) for x in feeds], dim=3).permute(3, 0, 4, 1, 2)


class _Stack:
    """The k networks as one vmapped forward pass. Parameters are stacked every step (so gradients reach each
    network's own leaves, which its own Adam steps); BatchNorm buffers are stacked once, updated in place by
    the forward passes, and copied back by ``unstack``."""

    def __init__(self, models: Sequence[nn.Module], bf16: bool = False, channels_last: bool = False):
        self.models, self.base = list(models), models[0]
        self.bf16, self.channels_last = bf16, channels_last
        self.names = [n for n, _ in self.base.named_parameters()]
        own = [dict(m.named_buffers()) for m in self.models]
        self.buffers = {n: torch.stack([b[n] for b in own]) for n in own[0]}
        self._call = vmap(self._one)

    def _one(self, params: dict[str, torch.Tensor], buffers: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        return functional_call(self.base, (params, buffers), (x,))

    def __call__(self, feeds: Sequence[torch.Tensor], channels_last: bool | None = None,
                 buffers: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        """The k outputs, k x 1 x C x H x W, in the networks' dtype (cast back from bf16 under autocast).
        Conv weights stay in the plain layout: vmap's convolution rule returns wrong weight gradients when
        input and weight are both channels-last (torch 2.13, CPU: |error| 270 on a toy; ``check_layout``)."""
        per_model = zip(*(list(m.parameters()) for m in self.models))
        params = {n: torch.stack(list(ps)) for n, ps in zip(self.names, per_model)}
        x = _seed_stack_input(feeds, self.channels_last if channels_last is None else channels_last)
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            out = self._call(params, self.buffers if buffers is None else buffers, x)
        return out.to(x.dtype) if self.bf16 else out

    def check_layout(self, feeds: Sequence[torch.Tensor], tolerance: float = 1e-3) -> float:
        """Refuse ``channels_last`` where it changes the gradients on this device and build (its layout
        goes through vmap's convolution rule, which mishandled channels-last weights, above): one extra fp32
        forward/backward per layout, on copies of the BN buffers. Returns the worst difference relative
        to the largest gradient (float noise: ~1e-7; a layout bug: ~1)."""
        params = [p for m in self.models for p in m.parameters()]
        grads, bf16, self.bf16 = [], self.bf16, False
        try:
            for layout in (False, True):
                out = self(feeds, channels_last=layout, buffers={n: b.clone() for n, b in self.buffers.items()})
                grads.append(torch.autograd.grad(out.square().sum(), params))
        finally:
            self.bf16 = bf16
        scale = max(float(g.abs().max()) for g in grads[0])
        worst = max(float((a - b).abs().max()) for a, b in zip(*grads)) / max(scale, 1e-30)
        if worst > tolerance:
            raise RuntimeError(f"channels_last changes the batched gradients here (relative {worst:.2g}); "
                               "run without it")
        return worst

    def state(self, i: int) -> dict[str, torch.Tensor]:
        """Seed i's full state (weights, biases, BN running statistics): a rewinding snapshot."""
        own = {k: v.detach().clone() for k, v in self.models[i].state_dict().items()}
        own.update({n: b[i].detach().clone() for n, b in self.buffers.items()})
        return own

    @torch.no_grad()
    def unstack(self) -> None:
        for i, m in enumerate(self.models):
            for n, b in m.named_buffers():
                b.copy_(self.buffers[n][i])


@dataclass
class _Seed:
    """One seed's own state: what ``fit.fit_many`` keeps for one fit."""

    model: nn.Module
    z: torch.Tensor
    problem: Problem
    pairs: list[tuple[torch.Tensor, torch.Tensor]]
    empty: int  # convs the mask prunes away entirely
    opt: torch.optim.Optimizer
    gen: torch.Generator
    noise: torch.Tensor
    outputs: FitOutputs
    backtrack: Backtrack | None
    loss: float = math.nan
    snapshots: dict[int, dict[str, torch.Tensor]] = field(default_factory=dict)


def _new_seed(model: nn.Module, z: torch.Tensor, problem: Problem, cfg: FitConfig, seed: int,
              mask: Mask | None) -> _Seed:
    """As ``fit_many`` sets up one fit: mask applied, Adam, the reg-noise generator of ``seed``."""
    pairs = apply_mask(model, mask) if mask else []
    empty = sum(not bool(m.any()) for m in (mask or {}).values())
    gen = torch.Generator(device=z.device).manual_seed(stable_seed("reg_noise", seed))
    backtrack = Backtrack(list(model.parameters()), cfg, 1) if cfg.backtrack else None
    return _Seed(model, z, problem, pairs, empty, make_optimizer(list(model.parameters()), cfg.lr), gen,
                 torch.empty_like(z), FitOutputs(problem, cfg), backtrack)


def _step(stack: _Stack, seeds: list[_Seed], cfg: FitConfig, it: int, snapshot_at: Sequence[int],
          callback: Callable[[Step], None] | None) -> None:
    """One iteration of every seed: ``fit_many``'s step, with one batched forward/backward for all seeds."""
    for s in seeds:
        s.opt.zero_grad(set_to_none=True)
    feeds = [s.z if cfg.reg_noise_std == 0 else s.z + s.noise.normal_(generator=s.gen) * cfg.reg_noise_std
             for s in seeds]
    outs = stack(feeds)
    losses = torch.stack([s.problem.loss(outs[i]) for i, s in enumerate(seeds)])
    losses.sum().backward()  # seeds share no parameter: each gets exactly its own loss's gradient
    for i, (s, loss) in enumerate(zip(seeds, losses.tolist())):  # one device sync for all k losses
        rejected = s.backtrack is not None and s.backtrack.rejects(it, loss)
        s.loss = s.backtrack.saved_loss if rejected else loss  # a backtracked seed reports its restored state
        if not rejected:
            update_step(s.opt, s.pairs, s.model, cfg, s.gen, sanitize=bool(s.empty))
        if it in snapshot_at:
            s.snapshots[it] = stack.state(i)
        if not rejected:
            observe([s.outputs], it, [outs[i]], loss, cfg, callback if i == 0 else None)


def _finish(s: _Seed, cfg: FitConfig, seconds: float, k: int) -> FitResult:
    """The seed's FitResult with ``fit_many``'s metrics; ``seconds`` is the whole batch's wall time."""
    check_masked_zero(s.pairs)
    r = s.outputs.result(seconds, lambda: s.model(s.z).detach())
    r.metrics.update(loss_final=s.loss, backtracks=s.backtrack.count if s.backtrack else 0, iters=cfg.iters,
                     empty_layers=s.empty, seconds=seconds,
                     iters_per_second=cfg.iters / seconds if seconds > 0 else float("inf"))
    r.extra.update(snapshots=s.snapshots, seed_batch=k)
    return r


def fit_batch(models: Sequence[nn.Module], zs: Sequence[torch.Tensor], problems: Sequence[Problem], cfg: FitConfig,
              seeds: Sequence[int], masks: Sequence[Mask | None] | None = None, *,
              callback: Callable[[Step], None] | None = None, snapshot_at: Sequence[int] = (),
              bf16: bool = False, channels_last: bool = False) -> list[FitResult]:
    """``fit.fit`` for k seeds at once: seed i fits ``models[i]`` from ``zs[i]`` to ``problems[i]`` with
    ``masks[i]`` and the reg-noise generator of ``seeds[i]``; the networks must share one architecture.
    Models are left at their final step; snapshots land in each result's ``extra["snapshots"]``, and
    ``callback`` sees seed 0 (progress)."""
    k = len(models)
    masks = [None] * k if masks is None else list(masks)
    if not k or not len(zs) == len(problems) == len(seeds) == len(masks) == k:
        raise ValueError(f"one z, problem, seed and mask per model: got {k} models, {len(zs)} inputs, "
                         f"{len(problems)} problems, {len(seeds)} seeds, {len(masks)} masks")
    if (bf16 or channels_last) and zs[0].device.type != "cuda":
        raise ConfigError("bf16" if bf16 else "channels_last", f"applies on CUDA only, not {zs[0].device.type}")
    states = [_new_seed(m, z, p, cfg, s, mk) for m, z, p, s, mk in zip(models, zs, problems, seeds, masks)]
    for m in models:
        m.train()
    stack = _Stack(models, bf16=bf16, channels_last=channels_last)
    if channels_last:
        stack.check_layout([s.z for s in states])
    start = time.perf_counter()
    for it in range(1, cfg.iters + 1):
        _step(stack, states, cfg, it, snapshot_at, callback)
    seconds = time.perf_counter() - start
    stack.unstack()
    return [_finish(s, cfg, seconds, k) for s in states]


def _flat(cfg: RunConfig) -> dict[str, object]:
    """The config without its seed, as ``section.field`` -> value (so a refusal names the field)."""
    out: dict[str, object] = {}
    for key, value in replace(cfg, seed=0).as_dict().items():
        out.update({f"{key}.{k}": v for k, v in value.items()} if isinstance(value, dict) else {key: value})
    return out


def check_seed_batch(cfgs: Sequence[RunConfig], bf16: bool = False, channels_last: bool = False) -> None:
    """Refuse what cannot be one batch: configs that differ in more than ``seed``, repeated seeds, and the
    CUDA-only precision/layout flags on another device."""
    if not cfgs:
        raise ConfigError("seed", "no configs to batch")
    first = _flat(cfgs[0])
    for c in cfgs[1:]:
        other = _flat(c)
        differ = [name for name in first if first[name] != other[name]]
        if differ:
            name = differ[0]
            raise ConfigError(name.rsplit(".", 1)[-1], f"batched seeds must share every field but seed; {name} "
                                                       f"differs: {first[name]!r} vs {other[name]!r}")
    seeds = [c.seed for c in cfgs]
    if len(set(seeds)) != len(seeds):
        raise ConfigError("seed", f"batched seeds must differ, got {seeds}")
    device = resolve_device(cfgs[0].device)
    for name, on in (("bf16", bf16), ("channels_last", channels_last)):
        if on and device.type != "cuda":
            raise ConfigError(name, f"applies on CUDA only (this batch runs on {device.type}); allowed here: false")
    if cfgs[0].fit.es_stop:  # a detector's metrics are recorded per seed, but the batch runs every seed to the end
        raise ConfigError("es_stop", "a seed batch runs every seed for the whole budget; allowed here: false (the "
                                     "detector still records es_iter, psnr_es and es_gap per seed)")


def fit_seeds(cfgs: Sequence[RunConfig], masks: Sequence[Mask | None] | None = None, *,
              preps: Sequence[Prepared] | None = None, callback: Callable[[Step], None] | None = None,
              bf16: bool = False, channels_last: bool = False) -> list[tuple[FitResult, Prepared]]:
    """``fit.run`` for k configs that differ only in ``seed``, as one batched fit: one (result, prepared)
    pair per config, in order, with ``run``'s metrics. ``masks[i]`` (or None) prunes seed i."""
    check_seed_batch(cfgs, bf16, channels_last)
    preps = [prepare(c) for c in cfgs] if preps is None else list(preps)
    with computing(cfgs[0].threads, preps[0].z.device.type, cfgs[0].deterministic) as platform:
        results = fit_batch([p.model for p in preps], [p.z for p in preps], [p.problem for p in preps],
                            cfgs[0].fit, [c.seed for c in cfgs], masks, callback=callback, bf16=bf16,
                            channels_last=channels_last)
    for result, prep in zip(results, preps):
        c = counts(prep.model)
        result.metrics.update(params=c["params"], nonzero_params=c["nonzero_params"], conv_weights=c["conv_weights"],
                              height=prep.problem.clean.shape[2], width=prep.problem.clean.shape[3])
        result.extra["platform"] = platform.as_dict()
    return list(zip(results, preps))
