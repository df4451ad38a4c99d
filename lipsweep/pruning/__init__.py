"""Pruning: masks (``masks``) and the mask-method registry (``methods``). ``METHODS``, ``MaskRequest``,
``MaskMethod`` and ``score_method`` are the documented plugin API (README, "Adding a pruning method")."""

from lipsweep.pruning.methods import (
    METHODS,
    MaskMethod,
    MaskRequest,
    keep_top,
    score_method,
)

__all__ = ["METHODS", "MaskMethod", "MaskRequest", "keep_top", "score_method"]
