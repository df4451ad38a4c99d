"""Heckel & Hand's deep decoder itself (torch), built on first use by the ``deep_decoder`` prior
(``deep_decoder.py``, whose ``ALGORITHM`` versions this code too)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lipsweep.priors.base import ModelConfig


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
