"""The Deep Image Prior's "skip" hourglass (docs/science.md section 1); the default has 2,217,831 parameters.

This entry is light (its facts and parameter formula); the network is ``dip_net.py``, imported when one is
built, and this module's ``ALGORITHM`` versions it too."""

from __future__ import annotations

from typing import TYPE_CHECKING

from lipsweep.priors.base import PRIORS, ModelConfig, Prior

if TYPE_CHECKING:
    from torch import nn

# The version of this module's results (lipsweep.core.versions): raise it in the commit that changes them.
ALGORITHM = 1

INPUT_CONVS = ("levels.0.skip.conv", "levels.0.down1.conv")  # 36,992 weights at default width


def _build(cfg: ModelConfig) -> nn.Module:
    from lipsweep.priors.dip_net import SkipNet  # torch: loaded when a network is built

    return SkipNet(cfg)


def dip_params(cfg: ModelConfig) -> int:
    """Per level: skip 1x1 conv + BN, two down convs + BNs, merge BN, 3x3 and 1x1 up convs + BNs; a 1x1 head."""
    w, s = cfg.width, cfg.skip
    total = w * cfg.out_channels + cfg.out_channels
    for i in range(cfg.levels):
        d = cfg.input_depth if i == 0 else w
        skip = d * s + 3 * s if s else 0
        total += skip + (9 * d * w + 3 * w) + (9 * w * w + 3 * w) + 2 * (s + w) + (9 * (s + w) * w + 3 * w) + (w * w + 3 * w)
    return total


PRIORS.register("dip", Prior(
    build=_build,
    input_shape=lambda cfg, h, w: (1, cfg.input_depth, h, w),
    params=dip_params,
    input_convs=INPUT_CONVS,
))
