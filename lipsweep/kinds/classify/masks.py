"""The classifier's masks: the DIP's conv masks without ``head`` (the output conv the classifier replaces
with pooling and a linear layer), and the conversions between denoising and classification masks."""

from __future__ import annotations

from functools import lru_cache

import torch

from lipsweep.priors import ModelConfig, build_model, conv_weights
from lipsweep.pruning.masks import MaskSet

HEAD = "head"  # the DIP's output conv: the classifier replaces it with pooling + a linear layer


@lru_cache(maxsize=16)
def conv_shapes(model: ModelConfig) -> tuple[tuple[str, torch.Size], ...]:
    """The DIP's conv weights' names and shapes (built once per config: ``lipsweep show`` asks per level)."""
    return tuple((n, w.shape) for n, w in conv_weights(build_model(model, 0)).items())


@lru_cache(maxsize=16)
def dense_mask(model: ModelConfig) -> MaskSet:
    """Every conv of the classifier (the DIP's convs but ``head``), kept (one per config: masks are values)."""
    return MaskSet({n: torch.ones(s, dtype=torch.bool) for n, s in conv_shapes(model) if n != HEAD},
                   {"method": "dense", "level": 0})


def without_head(mask: MaskSet) -> MaskSet:
    """A denoising mask on the classifier: ``head`` is what the linear layer replaced."""
    return MaskSet({n: m for n, m in mask.masks.items() if n != HEAD}, {**mask.meta, "dropped": HEAD})


def with_head(mask: MaskSet, model: ModelConfig) -> MaskSet:
    """A classification mask on the DIP: its ``head`` (absent from the classifier) stays dense."""
    head = dict(conv_shapes(model))[HEAD]
    return MaskSet({**mask.masks, HEAD: torch.ones(head, dtype=torch.bool)}, {**mask.meta, "dense": HEAD})
