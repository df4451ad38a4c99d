"""The classifier's masks and the conversions between denoising and classification masks.

``lth``: the DIP's conv masks without ``head`` (the output conv the classifier replaces with pooling and a
linear layer). ``reference``: the DIP's conv masks without the two input convs, which the reference code's
classifier re-initialises for 3 channels and never masks (``pruning_utils.py`` l.91-95, ``prune_model_custom``
skips them); its 1x1 ``head`` stays and is pruned like any conv. A denoising mask on that classifier drops
its input convs (their 32-channel shape cannot fit, and the recipe never masks them: ``load_ticket_cifar``,
``LTH_utils.py`` l.193-217); a reference ticket on the DIP keeps the DIP's own input convs dense."""

from __future__ import annotations

from functools import lru_cache

import torch

from lipsweep.priors import ModelConfig, build_model, conv_weights
from lipsweep.pruning.masks import MaskSet

HEAD = "head"  # the DIP's output conv: the lth classifier replaces it with pooling + a linear layer
INPUTS = ("levels.0.skip.conv", "levels.0.down1.conv")  # the convs that read the image: fresh under reference


def left_out(recipe: str) -> tuple[str, ...]:
    """The DIP convs a recipe's classification masks do not cover."""
    return INPUTS if recipe == "reference" else (HEAD,)


@lru_cache(maxsize=16)
def conv_shapes(model: ModelConfig) -> tuple[tuple[str, torch.Size], ...]:
    """The DIP's conv weights' names and shapes (built once per config: ``lipsweep show`` asks per level)."""
    return tuple((n, w.shape) for n, w in conv_weights(build_model(model, 0)).items())


@lru_cache(maxsize=16)
def dense_mask(model: ModelConfig, recipe: str = "lth") -> MaskSet:
    """Every masked conv of the classifier (the DIP's convs but ``left_out``), kept (one per config)."""
    return MaskSet({n: torch.ones(s, dtype=torch.bool) for n, s in conv_shapes(model) if n not in left_out(recipe)},
                   {"method": "dense", "level": 0})


def without_head(mask: MaskSet) -> MaskSet:
    """A denoising mask on the classifier: ``head`` is what the linear layer replaced."""
    return MaskSet({n: m for n, m in mask.masks.items() if n != HEAD}, {**mask.meta, "dropped": HEAD})


def with_head(mask: MaskSet, model: ModelConfig) -> MaskSet:
    """A classification mask on the DIP: its ``head`` (absent from the classifier) stays dense."""
    head = dict(conv_shapes(model))[HEAD]
    return MaskSet({**mask.masks, HEAD: torch.ones(head, dtype=torch.bool)}, {**mask.meta, "dense": HEAD})


def on_classifier(mask: MaskSet, recipe: str) -> MaskSet:
    """A denoising mask on the recipe's classifier: without ``head`` (lth) or without the input convs."""
    if recipe == "lth":
        return without_head(mask)
    return MaskSet({n: m for n, m in mask.masks.items() if n not in INPUTS}, {**mask.meta, "dropped": ",".join(INPUTS)})


def on_dip(mask: MaskSet, model: ModelConfig, recipe: str) -> MaskSet:
    """A classification mask on the DIP: what the recipe's classifier does not mask stays dense."""
    if recipe == "lth":
        return with_head(mask, model)
    masks = {n: mask.masks[n] if n in mask.masks else torch.ones(s, dtype=torch.bool) for n, s in conv_shapes(model)
             if n in mask.masks or n in INPUTS}
    return MaskSet(masks, {**mask.meta, "dense": ",".join(n for n in masks if n not in mask.masks)})


def check_fits_classifier(mask: MaskSet, model: torch.nn.Module, recipe: str) -> None:
    """``mask`` covers exactly the classifier's convs but those its recipe never masks."""
    unmasked = {n: torch.ones_like(w, dtype=torch.bool) for n, w in conv_weights(model).items() if n in left_out(recipe)}
    MaskSet({**mask.masks, **unmasked}).check_fits(model)
