"""Fig. 7's layer-wise statistics, built so that they can fail (docs/science.md sections 1b and 7).

The paper reads per-layer sparsity against the layer's serial number (Section 4, Fig. 7): LIP keeps the
earlier layers, SNIP prunes them, random pruning is uniform, classification tickets keep the middle. An
unweighted mean over layers cannot test that: PyTorch's default init bound 1/sqrt(fan_in) makes a 1x1 conv's
weights 3x larger than a 3x3 conv's, so a global magnitude ranking of the *untrained* theta_0 already keeps
the late, 1x1-rich layers denser. Here each group's density is weighted by layer size (kept / total weights)
and set against two references at the same sparsity: theta_0 pruned globally by magnitude (same prior,
width, depth and seed) and random pruning (every prunable layer at the global density). The excess over the
theta_0 null is the number that tells the claims apart.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Collection, Mapping
from typing import TYPE_CHECKING

import pandas as pd

from lipsweep.core.errors import ConfigError
from lipsweep.priors import PRIORS, ModelConfig, build_model, conv_weights
from lipsweep.pruning.masks import MaskSet
from lipsweep.pruning.methods import magnitude_of

from .stats import forward_order, given

if TYPE_CHECKING:
    import torch

TYPES = ("encoder 3x3", "decoder 3x3", "skip 1x1", "decoder 1x1")
THIRDS = ("early third", "middle third", "late third")  # of the conv weights, in forward order
GROUPS = (*TYPES, *THIRDS, "all")
PARTS = {"skip": "skip 1x1", "down": "encoder 3x3", "up1": "decoder 3x3", "up2": "decoder 1x1"}
TOLERANCE = 0.02  # a density difference smaller than this is "no difference" (one seed has no error bar)
REFERENCE_RGB = 3  # the reference classifier's input convs read the image itself (LTH_IMP_Classification.py)


def layer_type(name: str) -> str | None:
    """The DIP conv's type: encoder 3x3 (down1/down2), decoder 3x3 (up1), skip 1x1, decoder 1x1 (up2, head)."""
    if name == "head":
        return "decoder 1x1"
    m = re.match(r"levels\.\d+\.(skip|down|up\d)\d*\.conv$", name)
    return PARTS.get(m.group(1)) if m else None


def thirds(sizes: Mapping[str, int]) -> dict[str, str]:
    """Each layer's third of the conv weights in forward order (the paper's x axis, size-weighted), by where
    its middle weight falls."""
    total, seen, out = sum(sizes.values()), 0, {}
    for name in forward_order(list(sizes)):
        out[name] = THIRDS[min(2, int(3 * (seen + sizes[name] / 2) / total))]
        seen += sizes[name]
    return out


def type_profile(densities: Mapping[str, float], sizes: Mapping[str, int]) -> dict[str, float]:
    """Size-weighted density (kept / total weights) of each layer type, each third of the weights in forward
    order, and of all layers; layers absent from either dict are left out."""
    names = [n for n in densities if sizes.get(n, 0) > 0]
    if not names:
        return {}
    place = thirds({n: sizes[n] for n in names})
    members: dict[str, list[str]] = {}
    for n in names:
        for group in (layer_type(n), place[n], "all"):
            if group:
                members.setdefault(group, []).append(n)
    return {g: sum(densities[n] * sizes[n] for n in members[g]) / sum(sizes[n] for n in members[g])
            for g in GROUPS if g in members}


def theta0_null(weights: Mapping[str, torch.Tensor], densities: Mapping[str, float],
                frozen: Collection[str] = ()) -> dict[str, float]:
    """Per-layer densities of untrained theta_0 pruned once, globally, by |w| (IMP's own ``magnitude_of``) to
    as many kept weights as the run's mask over the same layers; ``frozen`` layers stay dense, as in the run."""
    import torch

    names = [n for n in densities if n in weights]
    frozen = [n for n in frozen if n in names]
    keep = round(sum(densities[n] * weights[n].numel() for n in names if n not in frozen))
    dense = MaskSet({n: torch.ones(weights[n].shape, dtype=torch.bool) for n in names})
    return MaskSet(magnitude_of(weights, dense, keep, frozen)).layer_densities()


def random_null(densities: Mapping[str, float], sizes: Mapping[str, int],
                frozen: Collection[str] = ()) -> dict[str, float]:
    """Random pruning's expected per-layer density at the run's sparsity: the prunable layers' global density
    in every prunable layer (``nested_random`` and ``random_uniform`` alike); frozen layers dense."""
    free = [n for n in densities if n in sizes and n not in frozen]
    total = sum(sizes[n] for n in free)
    density = sum(densities[n] * sizes[n] for n in free) / total if total else 1.0
    return {n: 1.0 if n in frozen else density for n in densities if n in sizes}


def compare(densities: Mapping[str, float], weights: Mapping[str, torch.Tensor], frozen: Collection[str] = (),
            null: Mapping[str, float] | None = None) -> list[dict]:
    """Per group: the mask's size-weighted density, the theta_0 null's (``null``: its per-layer densities,
    computed here if not given) and random's, and the excess over each."""
    dens = {n: float(d) for n, d in densities.items() if n in weights}
    sizes = {n: int(weights[n].numel()) for n in dens}
    run = type_profile(dens, sizes)
    null = type_profile(null if null is not None else theta0_null(weights, dens, frozen), sizes)
    rnd = type_profile(random_null(dens, sizes, frozen), sizes)
    return [{"group": g, "density": run[g], "null": null[g], "random": rnd[g], "excess_null": run[g] - null[g],
             "excess_random": run[g] - rnd[g]} for g in run]


def cumulative_sparsity(densities: Mapping[str, float], sizes: Mapping[str, int],
                        dense: Collection[str] = ()) -> list[tuple[str, float]]:
    """The reference's Fig. 7 curve (ref: Sparsity_ratio.py:145-155 never resets its sums): the running,
    size-weighted sparsity of the layers so far in forward order, with ``dense`` layers (its unmasked input
    convs, ref: pruning_utils.py:91-95) measured as dense. Not a per-layer sparsity."""
    zeros = seen = 0.0
    out = []
    for name in forward_order([n for n in densities if n in sizes]):
        zeros += 0.0 if name in dense else (1.0 - densities[name]) * sizes[name]
        seen += sizes[name]
        out.append((name, zeros / seen if seen else 0.0))
    return out


@functools.lru_cache(maxsize=16)
def _theta0(cfg: ModelConfig, seed: int) -> dict[str, torch.Tensor]:
    return {n: w.detach().clone() for n, w in conv_weights(build_model(cfg, seed)).items()}


def theta0_weights(row: pd.Series) -> dict[str, torch.Tensor] | None:
    """theta_0's conv weights as the row's trial built them (prior, width, depth, channels, seed); under
    ``classify_recipe: reference`` the input convs read 3 channels. None where no theta_0 can be built."""
    kind = str(given(row, "model", "dip"))
    try:
        if PRIORS.get(kind).pretrained:
            return None
        cfg = ModelConfig(kind=kind, width=int(given(row, "width", 128)), levels=int(given(row, "depth", 5)),
                          out_channels=int(given(row, "channels", 3)))
    except (ConfigError, TypeError, ValueError):
        return None
    weights = dict(_theta0(cfg, int(given(row, "seed", 0))))
    if given(row, "classify_recipe") == "reference":
        weights.update({n: weights[n][:, :REFERENCE_RGB] for n in PRIORS.get(kind).input_convs if n in weights})
    return weights


def keeps_input_convs(row: pd.Series) -> bool:
    """Whether the row's chain kept its input convs dense: the param read back as a bool or as its word (a
    string "False" is not true)."""
    return str(given(row, "keep_input_convs", False)).lower() == "true"


def frozen_convs(row: pd.Series) -> tuple[str, ...]:
    """The convs the row's trial never pruned: the input convs under ``keep_input_convs`` or the reference
    classifier (ref: pruning_utils.py:91-95)."""
    kind = str(given(row, "model", "dip"))
    keeps = keeps_input_convs(row) or given(row, "classify_recipe") == "reference"
    return PRIORS.get(kind).input_convs if keeps and kind in PRIORS else ()


def input_convs(row: pd.Series) -> tuple[str, ...]:
    """The reference's unmasked input convs of the row's prior (dense in the reference-style curve)."""
    kind = str(given(row, "model", "dip"))
    return PRIORS.get(kind).input_convs if kind in PRIORS else ()


def claim_of(series: str) -> tuple[str, str | None, str, int] | None:
    """The paper's Fig. 7 claim about a series: (words, group, reference column, sign); the magnitude methods
    are judged against the theta_0 null, SNIP and random against uniform (random); None: no claim. A trailing
    bracket (the classifier's recipe) is not part of the name."""
    s = re.sub(r"\s*\([^)]*\)$", "", series.lower())
    if s == "classification ticket":
        return "classification tickets keep the middle layers", "middle third", "null", 1
    if s.startswith("imp") or s.endswith(" lip"):
        return "LIP keeps the early layers", "early third", "null", 1
    if s.startswith("snip"):
        return "SNIP prunes the early layers", "early third", "random", -1
    if s == "random" or s.endswith(" random"):
        return "random pruning is uniform", None, "random", 0
    return None


def _verdict(value: float, sign: int) -> str:
    if sign == 0:
        return "supported" if abs(value) <= TOLERANCE else "contradicted"
    return "supported" if sign * value > TOLERANCE else "contradicted" if sign * value < -TOLERANCE else "no difference"


def claims(groups: pd.DataFrame) -> list[str]:
    """One line per series with a claim: the claimed group's excess at each sparsity and the verdict
    (|excess| <= ``TOLERANCE`` is no difference), then the encoder 3x3's and each third's excess over the null."""
    lines = []
    for series, part in groups.groupby("method", sort=True):
        claim = claim_of(str(series))
        if claim is None:
            continue
        words, group, ref, sign = claim
        by = part.set_index(["target_sparsity", "group"])
        targets = sorted(part["target_sparsity"].unique())
        pct = {t: f"{100 * part.loc[part['target_sparsity'] == t, 'sparsity'].mean():.0f}%" for t in targets}
        if group is None:
            excess = [part[(part["target_sparsity"] == t) & part["group"].isin([*TYPES, *THIRDS])]["excess_random"]
                      .abs().max() for t in targets]
            what = "largest |group density - uniform|"
        else:
            excess = [by.loc[(t, group), f"excess_{ref}"] if (t, group) in by.index else float("nan") for t in targets]
            what = f"{group} density - {'theta_0 null' if ref == 'null' else 'uniform'}"
        found = "; ".join(f"{_verdict(v, sign)} at {pct[t]}" for t, v in zip(targets, excess) if pd.notna(v))
        lines.append(f"- **{series}** ({words}): {what} = "
                     + ", ".join(f"{v:+.2f} at {pct[t]}" for t, v in zip(targets, excess) if pd.notna(v))
                     + f" -> {found}. " + _excess_line(by, pct))
    return lines


def _excess_line(by: pd.DataFrame, pct: dict[float, str]) -> str:
    """The encoder 3x3 and the three thirds' excess over the theta_0 null at each target (``pct``: its label,
    the sparsity the runs reached)."""
    def at(t: float, g: str) -> str:
        return f"{by.loc[(t, g), 'excess_null']:+.2f}" if (t, g) in by.index else "n/a"

    enc = ", ".join(f"{at(t, 'encoder 3x3')} at {label}" for t, label in pct.items())
    third = "; ".join(f"{' / '.join(at(t, g) for g in THIRDS)} at {label}" for t, label in pct.items())
    return f"Encoder 3x3 density - null = {enc}; early / middle / late third - null = {third}."
