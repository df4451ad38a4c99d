"""Restoration tasks as forward operators: y = A(x) (+ noise), loss = mean ||A(f(z)) - y||^2 (SPEC.md section 2).

One fit loop serves every task; only the operator changes. Randomness comes from a generator seeded by
(task, seed), so the observation is identical for every trial that shares (image, task, seed).
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from .errors import check_choice

TASKS = ("denoise", "inpaint", "sr4", "sr8")
SR_FACTORS = {"sr4": 4, "sr8": 8}
DENOISE_SIGMA = 25.0 / 255.0
INPAINT_KEEP = 0.5


def stable_seed(*parts: object) -> int:
    """A seed that depends only on its parts (not on Python's randomised hash)."""
    return zlib.crc32("|".join(map(str, parts)).encode()) & 0x7FFFFFFF


def lanczos2_kernel(factor: int) -> torch.Tensor:
    """DIP's Lanczos2 (a = 2) kernel with phase 0.5: 4*factor taps per side, separable, sum 1."""
    size = 4 * factor
    center = (size + 2) / 2
    a = 2.0
    taps = []
    for i in range(1, size + 1):
        x = abs(i + 0.5 - center) / factor
        taps.append(1.0 if x == 0 else a * math.sin(math.pi * x) * math.sin(math.pi * x / a) / (math.pi**2 * x * x))
    k1 = torch.tensor(taps, dtype=torch.float64)
    k2 = torch.outer(k1, k1)
    return (k2 / k2.sum()).float()


class Identity(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


class Masking(nn.Module):
    """Inpainting operator: keep the known entries (mask 1), zero the rest."""

    def __init__(self, mask: torch.Tensor):
        super().__init__()
        self.register_buffer("mask", mask)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.mask


class Lanczos2Downsampler(nn.Module):
    """DIP's SR operator: replication pad (K - factor) / 2, then a per-channel stride-``factor`` conv."""

    def __init__(self, factor: int, channels: int = 3):
        super().__init__()
        k = lanczos2_kernel(factor)
        self.factor = factor
        self.pad = (k.shape[0] - factor) // 2
        self.channels = channels
        self.register_buffer("weight", k.expand(channels, 1, *k.shape).contiguous())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.pad(x, (self.pad,) * 4, mode="replicate")
        return F.conv2d(x, self.weight, stride=self.factor, groups=self.channels)


@dataclass(frozen=True)
class Problem:
    """A degraded observation with its operator; ``clean`` is for scoring only, never for fitting."""

    task: str
    operator: nn.Module
    observation: torch.Tensor  # 1x3xhxw
    clean: torch.Tensor  # 1x3xHxW
    baseline: torch.Tensor  # 1x3xHxW: the observation shown at full size, for psnr_observation

    def loss(self, output: torch.Tensor) -> torch.Tensor:
        return F.mse_loss(self.operator(output), self.observation)


def to_tensor(pixels: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(pixels)).permute(2, 0, 1).unsqueeze(0).float()


def to_pixels(t: torch.Tensor) -> np.ndarray:
    return t.detach().squeeze(0).permute(1, 2, 0).clamp(0, 1).cpu().numpy()


def _lanczos_resize(pixels: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """PIL Lanczos on 8-bit RGB, as DIP makes its low-resolution inputs (``get_low_res``)."""
    img = Image.fromarray(np.clip(np.rint(pixels * 255), 0, 255).astype(np.uint8))
    return np.asarray(img.resize(size, Image.LANCZOS), dtype=np.float32) / 255.0


def make_problem(task: str, clean: np.ndarray, seed: int, keep_mask: np.ndarray | None = None) -> Problem:
    """Degrade ``clean`` (HxWx3 in [0, 1]) for ``task``; ``keep_mask`` (HxW bool) replaces Bernoulli inpainting."""
    check_choice("task", task, TASKS)
    x = to_tensor(clean)
    g = torch.Generator().manual_seed(stable_seed("observation", task, seed))
    if task == "denoise":
        y = (x + torch.randn(x.shape, generator=g) * DENOISE_SIGMA).clamp(0, 1)
        return Problem(task, Identity(), y, x, y)
    if task == "inpaint":
        if keep_mask is None:
            mask = (torch.rand(x.shape, generator=g) < INPAINT_KEEP).float()
        else:
            mask = torch.from_numpy(keep_mask).float().expand_as(x[0]).unsqueeze(0).contiguous()
        op = Masking(mask)
        y = op(x)
        return Problem(task, op, y, x, y)
    factor = SR_FACTORS[task]
    h, w = clean.shape[:2]
    low = _lanczos_resize(clean, (w // factor, h // factor))
    up = _lanczos_resize(low, (w, h))
    return Problem(task, Lanczos2Downsampler(factor), to_tensor(low), x, to_tensor(up))
