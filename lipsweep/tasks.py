"""Restoration tasks as forward operators: y = A(x) (+ noise), loss = mean ||A(f(z)) - y||^2 (SPEC.md section 2).

One fit loop serves every task; only the operator changes (deepinv's rhythm). A task is a registry entry:
how it degrades a clean image, what its operator does to shapes, and SPEC.md's DIP fit defaults for it.
Randomness comes from a generator seeded by (image content, task, seed): the observation is identical for
every trial that shares them, and two images never share a noise field or a Bernoulli mask (multi-image
IMP averages independent noise away, SPEC.md section 3).
"""

from __future__ import annotations

import hashlib
import math
import zlib
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from .registry import Registry

DENOISE_SIGMA = 25.0 / 255.0
INPAINT_KEEP = 0.5


def pixel_hash(pixels: np.ndarray) -> str:
    """sha256 of an image's float32 pixels (16 hex digits): what "image content" means for seeding."""
    return hashlib.sha256(np.ascontiguousarray(pixels, dtype=np.float32).tobytes()).hexdigest()[:16]


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


Degrade = Callable[[torch.Tensor, np.ndarray, torch.Generator, "np.ndarray | None"],
                   tuple[nn.Module, torch.Tensor, torch.Tensor]]


@dataclass(frozen=True)
class Task:
    """A registry entry. ``degrade(x, clean, generator, keep_mask)`` returns (operator, observation, baseline);
    the operator maps 1x3xHxW to 1x3x(H/scale)x(W/scale) and is linear where ``linear`` says so.
    ``iters`` .. ``backtrack`` are SPEC.md section 2's DIP defaults; ``y_psnr`` adds the SR metrics."""

    degrade: Degrade
    iters: int
    reg_noise_std: float
    ema: float | None
    backtrack: bool
    scale: int = 1
    linear: bool = True
    y_psnr: bool = False
    mask_image: bool = False  # accepts an inpainting mask image (``inpaint_mask``)


TASKS: Registry[Task] = Registry("task")


def _denoise(x: torch.Tensor, clean: np.ndarray, g: torch.Generator, keep_mask) -> tuple:
    y = (x + torch.randn(x.shape, generator=g) * DENOISE_SIGMA).clamp(0, 1)
    return Identity(), y, y


def _inpaint(x: torch.Tensor, clean: np.ndarray, g: torch.Generator, keep_mask) -> tuple:
    """Bernoulli(0.5) per pixel and channel, or a given HxW mask image (white = known)."""
    if keep_mask is None:
        mask = (torch.rand(x.shape, generator=g) < INPAINT_KEEP).float()
    else:
        mask = torch.from_numpy(keep_mask).float().expand_as(x[0]).unsqueeze(0).contiguous()
    op = Masking(mask)
    y = op(x)
    return op, y, y


def _super_resolution(factor: int) -> Degrade:
    def degrade(x: torch.Tensor, clean: np.ndarray, g: torch.Generator, keep_mask) -> tuple:
        """The low-res input is a PIL Lanczos resize, as DIP makes it; the operator is its Lanczos2 conv."""
        h, w = clean.shape[:2]
        low = _lanczos_resize(clean, (w // factor, h // factor))
        up = _lanczos_resize(low, (w, h))
        return Lanczos2Downsampler(factor), to_tensor(low), to_tensor(up)

    return degrade


# sr8 follows the paper (4000 its, 0.05); the reference code's 2000 / 0.03 are reachable by overriding
# iters / reg_noise_std.
TASKS.register("denoise", Task(_denoise, iters=3000, reg_noise_std=1.0 / 30.0, ema=0.99, backtrack=True))
TASKS.register("inpaint", Task(_inpaint, iters=3000, reg_noise_std=0.03, ema=None, backtrack=False, mask_image=True))
TASKS.register("sr4", Task(_super_resolution(4), iters=2000, reg_noise_std=0.03, ema=None, backtrack=False, scale=4,
                           y_psnr=True))
TASKS.register("sr8", Task(_super_resolution(8), iters=4000, reg_noise_std=0.05, ema=None, backtrack=False, scale=8,
                           y_psnr=True))


def make_problem(task: str, clean: np.ndarray, seed: int, keep_mask: np.ndarray | None = None) -> Problem:
    """Degrade ``clean`` (HxWx3 in [0, 1]) for ``task``; ``keep_mask`` (HxW bool) replaces Bernoulli inpainting."""
    entry = TASKS.get(task)
    x = to_tensor(clean)
    g = torch.Generator().manual_seed(stable_seed("observation", pixel_hash(clean), task, seed))
    operator, observation, baseline = entry.degrade(x, clean, g, keep_mask)
    return Problem(task, operator, observation, x, baseline)
