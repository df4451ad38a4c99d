"""Heckel & Hand's deep decoder, the under-parameterized baseline (SPEC.md section 1): 6k^2 + 15k params."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from .base import PRIORS, ModelConfig, Prior

# The version of this module's results (lipsweep.versions): raise it in the commit that changes them.
ALGORITHM = 1

DD_ITERS = {"denoise": 1900}  # its paper's denoising budget


class DeepDecoder(nn.Module):
    """6 x (1x1 conv, upsample x2 except last, ReLU, BN), 1x1 conv, sigmoid."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        k = cfg.width
        self.hidden = nn.ModuleList(nn.Conv2d(k, k, 1, bias=False) for _ in range(cfg.levels + 1))
        self.bns = nn.ModuleList(nn.BatchNorm2d(k) for _ in range(cfg.levels + 1))
        self.head = nn.Conv2d(k, cfg.out_channels, 1, bias=False)

    def logits(self, z: torch.Tensor) -> torch.Tensor:
        x = z
        last = len(self.hidden) - 1
        for i, (conv, bn) in enumerate(zip(self.hidden, self.bns)):
            x = conv(x)
            if i < last:
                x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
            x = bn(F.relu(x))
        return self.head(x)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.logits(z))


def _check(cfg: ModelConfig) -> None:
    if cfg.levels != 5:
        raise ConfigError("levels", "the deep decoder has 5 upsamplings (6 hidden layers); levels must be 5")


PRIORS.register("deep_decoder", Prior(
    build=DeepDecoder,
    input_shape=lambda cfg, h, w: (1, cfg.width, h // cfg.granularity, w // cfg.granularity),
    params=lambda cfg: (cfg.levels + 1) * (cfg.width**2 + 2 * cfg.width) + cfg.out_channels * cfg.width,
    check=_check,
    # Heckel & Hand's protocol: no input noise, no output EMA, no backtracking (the DIP's extras stay
    # available as explicit trial fields); 1900 iterations for denoising as in its paper.
    fit_defaults=lambda task: {"reg_noise_std": 0.0, "ema": None, "backtrack": False,
                               **({"iters": DD_ITERS[task]} if task in DD_ITERS else {})},
    cost_width=lambda width: width / 4,  # 1x1 convs: ~1/9 of a 3x3's cost per channel pair
))
