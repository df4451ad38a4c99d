"""How a mask is made (docs/science.md section 4): a registry of mask methods over one shared selection.

jaxpruner's rhythm: a method is a score function; ``keep_top`` (global top-k) and ``per_layer_random``
(counts per layer, random positions) do the selection for all of them. Masks are returned, never edited in
place. Layers named in ``frozen`` (the reference code's unpruned input convs) stay dense and take no part
in the counts. Adding a method is one ``METHODS.register`` call (see ``score_method``).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from lipsweep.core.registry import Registry
from lipsweep.priors import conv_weights
from lipsweep.problems.tasks import Problem
from lipsweep.pruning.masks import MaskSet

if TYPE_CHECKING:
    import torch
    from torch import nn

# The version of this module's results (lipsweep.core.versions): raise it in the commit that changes them.
ALGORITHM = 1

Masks = dict[str, "torch.Tensor"]


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
    import torch

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
    return magnitude_to(model, mask, remaining - round(fraction * remaining), frozen)


def magnitude_of(weights: Mapping[str, torch.Tensor], mask: MaskSet, keep: int,
                 frozen: Collection[str] = ()) -> dict[str, torch.Tensor]:
    """Keep the ``keep`` largest |w| among ``mask``'s weights, globally: IMP's step over any network's weights
    (the DIP's convs, a generator's, a classifier's)."""
    return keep_top({n: weights[n].detach().abs().cpu() for n in mask.masks}, mask, keep, frozen)


def nested_random(mask: MaskSet, keep: int, seed: int) -> dict[str, torch.Tensor]:
    """Uniform random scores over ``mask``'s weights, ranked globally: exactly ``keep`` kept, each layer's
    density the global one in expectation, and nested in ``mask`` like IMP's next level."""
    import torch

    g = torch.Generator().manual_seed(seed)
    return keep_top({n: torch.rand(m.shape, generator=g) for n, m in mask.masks.items()}, mask, keep)


def magnitude_to(model: nn.Module, mask: MaskSet, keep: int, frozen: Collection[str] = ()) -> dict[str, torch.Tensor]:
    """IMP's pruning step to a given count: keep the ``keep`` largest-magnitude remaining weights, globally
    (``magnitude_step``'s 20% is ``keep = remaining - round(0.2 * remaining)``; a target sparsity grid,
    e.g. Table 4's 20/40/.../90%, gives other counts)."""
    return magnitude_of(conv_weights(model), mask, keep, frozen)


def per_layer_random(shapes: Mapping[str, torch.Size], counts: Mapping[str, int], seed: int) -> dict[str, torch.Tensor]:
    """Exactly ``counts[name]`` weights kept per layer, positions uniform at random."""
    import torch

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
    return per_layer_random({n: m.shape for n, m in dense.masks.items()}, uniform_counts(dense, keep, frozen), seed)


def uniform_counts(mask: MaskSet, keep: int, frozen: Collection[str] = ()) -> dict[str, int]:
    """One density for every layer: each non-frozen layer gets round(density * its size), density = keep /
    prunable weights; frozen layers keep every weight."""
    density = keep / prunable_total(mask, frozen)
    return {n: (m.numel() if n in frozen else round(density * m.numel())) for n, m in mask.masks.items()}


def random_profile(profile: MaskSet, seed: int) -> dict[str, torch.Tensor]:
    """Random positions with another mask's per-layer counts (Fig. 15: random with the LIP's layer profile)."""
    return per_layer_random({n: m.shape for n, m in profile.masks.items()}, profile.layer_counts(), seed)


def snip_scores(model: nn.Module, z: torch.Tensor, problem: Problem) -> dict[str, torch.Tensor]:
    """SNIP (Lee et al. 2018): |dL/dw * w| at theta_0 on the task loss of the degraded observation."""
    net = copy.deepcopy(model).train()
    net.zero_grad(set_to_none=True)
    problem.loss(net(z)).backward()
    return {n: (w.grad * w).detach().abs().cpu() for n, w in conv_weights(net).items()}


def keep_top_per_layer(scores: Mapping[str, torch.Tensor], eligible: MaskSet, keep: int,
                       frozen: Collection[str] = ()) -> dict[str, torch.Tensor]:
    """Layer-wise allocation: every non-frozen layer keeps its ``uniform_counts`` share (at most what is still
    eligible there) of its highest scores, by ``keep_top`` within the layer."""
    counts = uniform_counts(eligible, keep, frozen)
    return {name: m.clone() if name in frozen else
            keep_top({name: scores[name]}, MaskSet({name: m}), min(counts[name], int(m.sum())))[name]
            for name, m in eligible.masks.items()}


def synflow(model: nn.Module, input_shape: tuple[int, ...], dense: MaskSet, keep: int, rounds: int = 100,
            frozen: Collection[str] = (), select: Callable = keep_top) -> dict[str, torch.Tensor]:
    """SynFlow (Tanaka et al. 2020): data-free, iterative, density shrinking exponentially over ``rounds``.

    R = sum of the pre-sigmoid output for an all-ones input through |theta| with BN in eval mode, in float64
    (products over 26 layers overflow float32); score |dR/dw * w| of the still-masked network.

    ``select`` = ``keep_top`` is the method as published (global ranking). On the hourglass it empties the
    skip branches first: synaptic flow is conserved per *path*, and a skip branch (4 of the 132 channels
    merged at each level) carries a small share of R spread over few weights, so its scores sit below the
    deep path's. ``keep_top_per_layer`` (the ``synflow_layerwise`` method) ranks within each layer instead.
    """
    import torch

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
        current = MaskSet(select(scores, current, target, frozen))
    return dict(current.masks)


def skip_inputs(model: nn.Module) -> dict[str, torch.Tensor]:
    """The weights of the hourglass's skip paths, by conv name: every skip conv's weights and the ``up1``
    weights that read the skip channels (the first ``skip`` of the merged channels, ``dip_net.SkipNet``).
    SynFlow cuts exactly these on this net (docs/science.md section 4, SynFlow); a net without skips has none."""
    import torch

    out: dict[str, torch.Tensor] = {}
    for name, module in model.named_modules():
        skip, up1 = getattr(module, "skip", None), getattr(module, "up1", None)
        if skip is None or up1 is None or not hasattr(skip, "conv"):
            continue
        out[f"{name}.skip.conv"] = torch.ones_like(skip.conv.weight, dtype=torch.bool)
        reads = torch.zeros_like(up1.conv.weight, dtype=torch.bool)
        reads[:, :skip.conv.out_channels] = True
        out[f"{name}.up1.conv"] = reads
    return out


def skip_cut(model: nn.Module, dense: MaskSet) -> dict[str, torch.Tensor]:
    """The control for SynFlow's loss (Table 4): the dense net with only the ``up1`` weights that read the skip
    channels removed; its sparsity is theirs (about 7% at width 16), whatever the level asks."""
    cut = skip_inputs(model)
    return {n: m & ~cut[n] if n.endswith(".up1.conv") and n in cut else m.clone() for n, m in dense.masks.items()}


def protect(select: Callable, protected: Mapping[str, torch.Tensor]) -> Callable:
    """A selection that always keeps the ``protected`` weights (their scores raised above every other), so
    they count in the kept total: the skip-protected SynFlow variant."""
    import torch

    def chosen(scores, eligible, keep, frozen=()):
        raised = {n: torch.where(protected[n], torch.full_like(s, float("inf")), s) if n in protected else s
                  for n, s in scores.items()}
        return select(raised, eligible, keep, frozen)
    return chosen


@dataclass(frozen=True)
class MaskRequest:
    """What a one-shot method may use to make level ``level``'s mask: theta_0, the degraded images and their
    inputs, the count to keep, a seed, and (``profile``) another method's mask at the same level."""

    level: int
    keep: int
    seed: int
    dense: MaskSet
    frozen: tuple[str, ...]
    model: Callable[[], nn.Module]  # a fresh network at theta_0
    problems: Sequence[Problem]
    inputs: Sequence[torch.Tensor]
    profile: Callable[[str], MaskSet]  # profile("imp"): that method's mask at this level
    options: Mapping[str, object] = field(default_factory=dict)  # the chain's method fields (synflow_rounds)

    def input_for(self, i: int) -> torch.Tensor:
        return self.inputs[0 if len(self.inputs) == 1 else i]


@dataclass(frozen=True)
class NestedRequest:
    """What a nested successor may use (the chains of kinds ``gan`` and ``classify`` nest each level's mask in
    the last): level L-1's mask, the count to keep, a seed, and the weights to rank: ``trained()`` (level
    L-1's network trained, or fine-tuned, under its mask) and ``start()`` (the chain's starting weights:
    theta_0, or a generator's pretrained weights)."""

    prev: MaskSet
    keep: int
    seed: int
    trained: Callable[[], Mapping[str, torch.Tensor]]
    start: Callable[[], Mapping[str, torch.Tensor]]


@dataclass(frozen=True)
class MaskMethod:
    """A registry entry. One-shot methods give ``make``; a sequential one (IMP) gives ``successor``: level
    L + 1's mask, keeping a given count, from level L's trained network and mask. ``nested``: level L's mask
    from level L-1's for the nested chains of the generator and classifier kinds (``trains``: it ranks the
    trained weights, so the training settings enter those chains' keys). ``key_fields`` are chain fields that
    enter the chain key for this method only; ``layer_slack``: how many weights per layer the kept count may
    differ from the request (per-layer rounding; 0 = exact); ``fixed``: the mask is the same at every level
    whatever the count (a control: one level is all a sweep needs)."""

    make: Callable[[MaskRequest], Masks | MaskSet] | None = None
    successor: Callable[[nn.Module, MaskSet, int, Collection[str]], Masks] | None = None
    nested: Callable[[NestedRequest], Masks] | None = None
    trains: bool = False
    key_fields: tuple[str, ...] = ()
    layer_slack: int = 0
    fixed: bool = False  # a control whose mask ignores the level's count (``skip_cut``)

    @property
    def sequential(self) -> bool:
        return self.successor is not None


METHODS: Registry[MaskMethod] = Registry("method")


def score_method(score: Callable[[MaskRequest], Mapping[str, torch.Tensor]], **kw: object) -> MaskMethod:
    """A one-shot method from a score function: keep the ``keep`` highest scores globally."""
    return MaskMethod(make=lambda req: keep_top(score(req), req.dense, req.keep, req.frozen), **kw)


def _snip(req: MaskRequest) -> dict[str, torch.Tensor]:
    """SNIP's score summed over the images of the chain (Algorithm 2 fits several)."""
    model, scores = req.model(), {}
    for i, p in enumerate(req.problems):
        for n, s in snip_scores(model, req.input_for(i), p).items():
            scores[n] = scores.get(n, 0) + s
    return scores


def _random_profile(req: MaskRequest) -> MaskSet:
    profile = req.profile("imp")
    return MaskSet(random_profile(profile, req.seed), {"profile": profile.hash})


def _synflow_keep_skips(req: MaskRequest) -> dict[str, torch.Tensor]:
    model = req.model()
    return synflow(model, tuple(req.inputs[0].shape), req.dense, req.keep, int(req.options["synflow_rounds"]),
                   req.frozen, select=protect(keep_top, skip_inputs(model)))


def nested_methods() -> tuple[str, ...]:
    """The methods a nested chain (kinds ``gan``, ``classify``) can use."""
    return tuple(n for n, m in METHODS.items() if m.nested is not None)


METHODS.register("imp", MaskMethod(successor=magnitude_to, trains=True,
                                   nested=lambda r: magnitude_of(r.trained(), r.prev, r.keep)))
# DIP chains: one-shot, one density per layer; nested chains: global random scores within the last level's mask
METHODS.register("random", MaskMethod(make=lambda req: random_uniform(req.dense, req.keep, req.seed, req.frozen),
                                      nested=lambda r: nested_random(r.prev, r.keep, r.seed), layer_slack=1))
METHODS.register("random_profile", MaskMethod(make=_random_profile))
METHODS.register("snip", score_method(_snip))
METHODS.register("synflow", MaskMethod(
    make=lambda req: synflow(req.model(), tuple(req.inputs[0].shape), req.dense, req.keep,
                             int(req.options["synflow_rounds"]), req.frozen),
    key_fields=("synflow_rounds",)))
METHODS.register("synflow_layerwise", MaskMethod(
    make=lambda req: synflow(req.model(), tuple(req.inputs[0].shape), req.dense, req.keep,
                             int(req.options["synflow_rounds"]), req.frozen, select=keep_top_per_layer),
    key_fields=("synflow_rounds",), layer_slack=1))
# Table 4's mechanism (issue 27): the skip cut alone, and SynFlow with the skip paths kept
METHODS.register("skip_cut", MaskMethod(make=lambda req: skip_cut(req.model(), req.dense), fixed=True))
METHODS.register("synflow_keep_skips", MaskMethod(
    make=lambda req: _synflow_keep_skips(req), key_fields=("synflow_rounds",)))
# The largest |w| of the starting weights (theta_0; a generator's pretrained weights) without any training:
# what IMP's training step adds (for the generator: the paper's fine-tuning; Fig. 7's theta_0 null).
METHODS.register("magnitude", MaskMethod(make=lambda req: magnitude_to(req.model(), req.dense, req.keep, req.frozen),
                                         nested=lambda r: magnitude_of(r.start(), r.prev, r.keep)))
