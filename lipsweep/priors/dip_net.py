"""The DIP "skip" hourglass itself (torch), built on first use by the ``dip`` prior (``dip.py``, whose
``ALGORITHM`` versions this code too)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lipsweep.priors.base import ModelConfig


class ConvBlock(nn.Sequential):
    """Reflection-padded conv, BatchNorm, LeakyReLU(0.2): DIP's conv + bn + act."""

    def __init__(self, c_in: int, c_out: int, k: int, stride: int = 1):
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, k, stride=stride, padding=(k - 1) // 2, padding_mode="reflect")
        self.bn = nn.BatchNorm2d(c_out)
        self.act = nn.LeakyReLU(0.2, inplace=True)


class SkipLevel(nn.Module):
    """One hourglass level: skip branch, two down convs, (deeper levels), merge BN, two up convs."""

    def __init__(self, d_in: int, down: int, up: int, skip: int, k_deeper: int):
        super().__init__()
        self.skip = ConvBlock(d_in, skip, 1) if skip else None
        self.down1 = ConvBlock(d_in, down, 3, stride=2)
        self.down2 = ConvBlock(down, down, 3)
        self.merge_bn = nn.BatchNorm2d(skip + k_deeper)
        self.up1 = ConvBlock(skip + k_deeper, up, 3)
        self.up2 = ConvBlock(up, up, 1)


def _center_crop_to(a: torch.Tensor, h: int, w: int) -> torch.Tensor:
    dh, dw = (a.shape[2] - h) // 2, (a.shape[3] - w) // 2
    return a[:, :, dh:dh + h, dw:dw + w]


class SkipNet(nn.Module):
    """DIP "skip" hourglass (width 128, 5 levels, skip 4, input 32 by default)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        w, n = cfg.width, cfg.levels
        self.levels = nn.ModuleList(
            SkipLevel(cfg.input_depth if i == 0 else w, w, w, cfg.skip, w) for i in range(n)
        )
        self.head = nn.Conv2d(w, cfg.out_channels, 1)

    def _level(self, x: torch.Tensor, i: int) -> torch.Tensor:
        lvl = self.levels[i]
        deeper = lvl.down2(lvl.down1(x))
        if i + 1 < len(self.levels):
            deeper = self._level(deeper, i + 1)
        deeper = F.interpolate(deeper, scale_factor=2, mode="bilinear", align_corners=False)
        if lvl.skip is not None:
            skip = lvl.skip(x)
            h, w = min(skip.shape[2], deeper.shape[2]), min(skip.shape[3], deeper.shape[3])
            deeper = torch.cat([_center_crop_to(skip, h, w), _center_crop_to(deeper, h, w)], dim=1)
        return lvl.up2(lvl.up1(lvl.merge_bn(deeper)))

    def logits(self, z: torch.Tensor) -> torch.Tensor:
        """Output before the sigmoid (SynFlow scores the linear path, which a saturated sigmoid would hide)."""
        return self.head(self._level(z, 0))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.logits(z))
