"""The priors: a registry of networks a fit can use (docs/science.md section 1). Each implementation is one file
that registers itself; ``PRIORS.get(name)`` names the allowed values."""

from lipsweep.priors import deep_decoder, dip  # noqa: F401 - importing registers them
from lipsweep.priors.base import (
    PRIORS,
    ModelConfig,
    Prior,
    build_model,
    conv_weights,
    counts,
    input_shape,
    make_input,
)

PRIORS.defer("pggan", "lipsweep.priors.pggan")  # a pretrained generator (trial kind 'gan'): torch, loaded when asked

__all__ = ["PRIORS", "ModelConfig", "Prior", "build_model", "conv_weights", "counts", "input_shape", "make_input"]
