"""Heckel & Hand's deep decoder, the under-parameterized baseline (docs/science.md section 1): 6k^2 + 15k params.

The network is ``deep_decoder_net.py``, imported when one is built; this module's ``ALGORITHM`` versions it too."""

from __future__ import annotations

from typing import TYPE_CHECKING

from lipsweep.core.errors import ConfigError
from lipsweep.priors.base import PRIORS, ModelConfig, Prior

if TYPE_CHECKING:
    from torch import nn

# The version of this module's results (lipsweep.core.versions): raise it in the commit that changes them.
ALGORITHM = 1

DD_ITERS = {"denoise": 1900}  # its paper's denoising budget


def _build(cfg: ModelConfig) -> nn.Module:
    from lipsweep.priors.deep_decoder_net import (
        DeepDecoder,  # torch: loaded when a network is built
    )

    return DeepDecoder(cfg)


def _check(cfg: ModelConfig) -> None:
    if cfg.levels != 5:
        raise ConfigError("levels", "the deep decoder has 5 upsamplings (6 hidden layers); levels must be 5")


PRIORS.register("deep_decoder", Prior(
    build=_build,
    input_shape=lambda cfg, h, w: (1, cfg.width, h // cfg.granularity, w // cfg.granularity),
    params=lambda cfg: (cfg.levels + 1) * (cfg.width**2 + 2 * cfg.width) + cfg.out_channels * cfg.width,
    check=_check,
    # Heckel & Hand's protocol: no input noise, no output EMA, no backtracking (the DIP's extras stay
    # available as explicit trial fields); 1900 iterations for denoising as in its paper.
    fit_defaults=lambda task: {"reg_noise_std": 0.0, "ema": None, "backtrack": False,
                               **({"iters": DD_ITERS[task]} if task in DD_ITERS else {})},
    cost_width=lambda width: width / 4,  # 1x1 convs: ~1/9 of a 3x3's cost per channel pair
))
