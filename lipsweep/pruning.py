"""How a mask is made (SPEC.md section 4): a score per weight, then one shared selection.

Each method is a score function; ``keep_top`` (global) and ``per_layer_random`` (uniform per layer)
do the selection. Masks are returned, never edited in place. Layers named in ``frozen`` (the reference
code's unpruned input convs) are left dense and take no part in the counts.
"""

from __future__ import annotations

import copy
from collections.abc import Collection, Mapping

import torch
from torch import nn

from .masks import MaskSet
from .models import conv_weights
from .tasks import Problem

METHODS = ("imp", "random", "random_profile", "snip", "synflow")
INPUT_CONVS = ("levels.0.skip.conv", "levels.0.down1.conv")  # 36,992 weights at default width


def prunable_total(mask: MaskSet, frozen: Collection[str] = ()) -> int:
    return sum(int(m.numel()) for n, m in mask.masks.items() if n not in frozen)


def prunable_kept(mask: MaskSet, frozen: Collection[str] = ()) -> int:
    return sum(int(m.sum()) for n, m in mask.masks.items() if n not in frozen)


def level_counts(total: int, levels: int, fraction: float = 0.2) -> list[int]:
    """Weights kept at each IMP level: prune round(fraction * remaining) per level (density ~ 0.8^L)."""
    counts = [total]
    for _ in range(levels):
        counts.append(counts[-1] - round(fraction * counts[-1]))
    return counts


def keep_top(scores: Mapping[str, torch.Tensor], eligible: MaskSet, keep: int,
             frozen: Collection[str] = ()) -> dict[str, torch.Tensor]:
    """Keep the ``keep`` highest-scoring eligible weights across all non-frozen layers (global ranking)."""
    names = [n for n in eligible.masks if n not in frozen]
    flat = torch.cat([torch.where(eligible.masks[n].reshape(-1), scores[n].reshape(-1).double(),
                                  torch.tensor(-float("inf"), dtype=torch.float64)) for n in names])
    n_eligible = sum(int(eligible.masks[n].sum()) for n in names)
    if not 0 <= keep <= n_eligible:
        raise ValueError(f"cannot keep {keep} of {n_eligible} eligible weights")
    chosen = torch.zeros(flat.numel(), dtype=torch.bool)
    chosen[torch.topk(flat, keep, sorted=False).indices] = True
    out, offset = {}, 0
    for n in names:
        size = eligible.masks[n].numel()
        out[n] = chosen[offset:offset + size].reshape(eligible.masks[n].shape)
        offset += size
    for n in frozen:
        out[n] = eligible.masks[n].clone()
    return {n: out[n] for n in eligible.masks}


def magnitude_step(model: nn.Module, mask: MaskSet, fraction: float = 0.2,
                   frozen: Collection[str] = ()) -> dict[str, torch.Tensor]:
    """IMP's pruning step: drop the ``fraction`` smallest-magnitude remaining weights, globally."""
    remaining = prunable_kept(mask, frozen)
    weights = conv_weights(model)
    scores = {n: weights[n].detach().abs().cpu() for n in mask.masks}
    return keep_top(scores, mask, remaining - round(fraction * remaining), frozen)


def per_layer_random(shapes: Mapping[str, torch.Size], counts: Mapping[str, int], seed: int) -> dict[str, torch.Tensor]:
    """Exactly ``counts[name]`` weights kept per layer, positions uniform at random."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for name, shape in shapes.items():
        n = int(torch.Size(shape).numel())
        m = torch.zeros(n, dtype=torch.bool)
        m[torch.randperm(n, generator=g)[:counts[name]]] = True
        out[name] = m.reshape(shape)
    return out


def random_uniform(dense: MaskSet, keep: int, seed: int, frozen: Collection[str] = ()) -> dict[str, torch.Tensor]:
    """Random pruning at one density in every layer (each layer keeps round(density * size))."""
    density = keep / prunable_total(dense, frozen)
    counts = {n: (m.numel() if n in frozen else round(density * m.numel())) for n, m in dense.masks.items()}
    return per_layer_random({n: m.shape for n, m in dense.masks.items()}, counts, seed)


def random_profile(profile: MaskSet, seed: int) -> dict[str, torch.Tensor]:
    """Random positions with another mask's per-layer counts (Fig. 15: random with the LIP's layer profile)."""
    return per_layer_random({n: m.shape for n, m in profile.masks.items()}, profile.layer_counts(), seed)


def snip_scores(model: nn.Module, z: torch.Tensor, problem: Problem) -> dict[str, torch.Tensor]:
    """SNIP (Lee et al. 2018): |dL/dw * w| at theta_0 on the task loss of the degraded observation."""
    net = copy.deepcopy(model).train()
    net.zero_grad(set_to_none=True)
    problem.loss(net(z)).backward()
    return {n: (w.grad * w).detach().abs().cpu() for n, w in conv_weights(net).items()}


def synflow(model: nn.Module, input_shape: tuple[int, ...], dense: MaskSet, keep: int, rounds: int = 100,
            frozen: Collection[str] = ()) -> dict[str, torch.Tensor]:
    """SynFlow (Tanaka et al. 2020): data-free, iterative, density shrinking exponentially over ``rounds``.

    R = sum of the pre-sigmoid output for an all-ones input through |theta| with BN in eval mode, in float64
    (products over 26 layers overflow float32); score |dR/dw * w| of the still-masked network.
    """
    net = copy.deepcopy(model).double().cpu().eval()
    with torch.no_grad():
        for p in net.parameters():
            p.abs_()
    weights = conv_weights(net)
    originals = {n: w.detach().clone() for n, w in weights.items()}
    ones = torch.ones(input_shape, dtype=torch.float64)
    total = prunable_total(dense, frozen)
    current = dense
    for r in range(1, rounds + 1):
        with torch.no_grad():
            for n, w in weights.items():
                w.copy_(originals[n] * current.masks[n])
        net.zero_grad(set_to_none=True)
        net.logits(ones).sum().backward()
        scores = {n: (w.grad * w).detach().abs() for n, w in weights.items()}
        target = round(total * (keep / total) ** (r / rounds))
        current = MaskSet(keep_top(scores, current, target, frozen))
    return dict(current.masks)
