"""Restoration tasks as forward operators: y = A(x) (+ noise), loss = mean ||A(f(z)) - y||^2 (SPEC.md section 2).

One fit loop serves every task; only the operator changes (deepinv's rhythm). A task is a registry entry:
how it degrades a clean image, what its operator does to shapes, and SPEC.md's DIP fit defaults for it.
Randomness comes from a generator seeded by (image content, task, seed): the observation is identical for
every trial that shares them, and two images never share a noise field or a Bernoulli mask (multi-image
IMP averages independent noise away, SPEC.md section 3).
"""

from __future__ import annotations

import abc
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

from .errors import ConfigError, check_int, check_positive
from .registry import Registry
from .targets import DENOISE_SIGMA, TARGETS

# The version of this module's results (lipsweep.versions): raise it in the commit that changes them.
ALGORITHM = 1

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
    """PIL Lanczos on 8-bit RGB (or grey), as DIP makes its low-resolution inputs (``get_low_res``)."""
    arr = np.clip(np.rint(pixels * 255), 0, 255).astype(np.uint8)
    img = Image.fromarray(arr[..., 0] if arr.shape[-1] == 1 else arr)
    out = np.asarray(img.resize(size, Image.LANCZOS), dtype=np.float32) / 255.0
    return out[..., None] if out.ndim == 2 else out


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


def _fit(x: torch.Tensor, clean: np.ndarray, g: torch.Generator, keep_mask) -> tuple:
    return Identity(), x, x


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
        return Lanczos2Downsampler(factor, x.shape[1]), to_tensor(low), to_tensor(up)

    return degrade


TASKS.register("denoise", Task(_denoise, iters=3000, reg_noise_std=1.0 / 30.0, ema=0.99, backtrack=True))
TASKS.register("inpaint", Task(_inpaint, iters=3000, reg_noise_std=0.03, ema=None, backtrack=False, mask_image=True))
TASKS.register("sr4", Task(_super_resolution(4), iters=2000, reg_noise_std=0.03, ema=None, backtrack=False, scale=4,
                           y_psnr=True))
# sr8 follows the paper (4000 its, 0.05); the reference code's 2000 / 0.03 are reachable by overriding
# iters / reg_noise_std.
TASKS.register("sr8", Task(_super_resolution(8), iters=4000, reg_noise_std=0.05, ema=None, backtrack=False, scale=8,
                           y_psnr=True))
# Fitting a target as it is (Fig. 10): no degradation, plain fitting (no input noise, EMA or backtracking,
# as DIP's Fig. 2), the paper's 10000 iterations.
TASKS.register("fit", Task(_fit, iters=10000, reg_noise_std=0.0, ema=None, backtrack=False))


def make_problem(task: str, clean: np.ndarray, seed: int, keep_mask: np.ndarray | None = None,
                 target: str = "image") -> Problem:
    """Degrade ``clean`` (HxWxC in [0, 1]) for ``task``; ``keep_mask`` (HxW bool) replaces Bernoulli inpainting.
    ``target`` first replaces the image by what is fitted (``targets.TARGETS``), which then counts as clean."""
    entry = TASKS.get(task)
    if target != "image":
        g = torch.Generator().manual_seed(stable_seed("target", pixel_hash(clean), target, seed))
        clean = TARGETS.get(target)(clean, g)
    x = to_tensor(clean)
    g = torch.Generator().manual_seed(stable_seed("observation", pixel_hash(clean), task, seed))
    operator, observation, baseline = entry.degrade(x, clean, g, keep_mask)
    return Problem(task, operator, observation, x, baseline)


# Generator-prior tasks (paper Section 5, Table 1), fitted by latent optimisation (lipsweep.latent).
# CS follows the paper's own script (VITA-Group/Chasing-Better-DIPs, Compressed_sensing_GAN/src/
# Eval_sparse_PGAN_on_CS.py, after Jalal et al. 2020): 980 Gaussian rows N(0, 1/980) plus 20 outlier rows
# that are all ones with observation 10000, noise std 0.01 on the clean rows only, x in [-1, 1] flattened.
CS_MEASUREMENTS = 1000
CS_OUTLIERS = 20
CS_NOISE_STD = 0.01
CS_OUTLIER_VALUE = 10000.0
CS_DENSE_LIMIT = 256 * 2**20  # bytes of float32 A stored at most; above it A is regenerated per product
CS_BLOCK_BYTES = 16 * 2**20  # one row block of A (the blocked operator's peak extra memory)
INPAINT_CENTRE_ITERS = 1500


def _centre_mask(x: torch.Tensor) -> torch.Tensor:
    """1 everywhere except a centred H/2 x W/2 rectangle (all channels): a quarter of the pixels is unknown."""
    h, w = x.shape[-2:]
    mask = torch.ones_like(x)
    mask[..., h // 4: h // 4 + h // 2, w // 4: w // 4 + w // 2] = 0.0
    return mask


def _inpaint_centre(x: torch.Tensor, clean: np.ndarray, g: torch.Generator, keep_mask) -> tuple:
    """Generator inpainting with a fixed hole (Fig. 8b); the paper's script uses DIP's kate mask image instead,
    which the ``inpaint`` task takes as ``inpaint_mask``."""
    op = Masking(_centre_mask(x))
    y = op(x)
    return op, y, y


def block_rows(n: int, block_bytes: int = CS_BLOCK_BYTES) -> int:
    """Rows of A per generated block: a function of n only, so the dense and blocked operators share blocks."""
    return max(1, block_bytes // (4 * n))


def gaussian_block(seed: int, rows: int, n: int, clean_rows: int, out: torch.Tensor | None = None) -> torch.Tensor:
    """One row block of the clean part of A, entries N(0, 1 / clean_rows) as the paper's script draws them;
    ``out`` (at least ``rows`` x n) is filled instead of allocating."""
    g = torch.Generator().manual_seed(seed)
    block = torch.randn(rows, n, generator=g, out=None if out is None else out[:rows])
    return block.div_(math.sqrt(clean_rows))


class CompressiveSensing(nn.Module, abc.ABC):
    """y = A (2 x - 1) on images x in [0, 1] (the generator's [-1, 1] scale), flattened in C, H, W order.

    A's first ``clean_rows`` rows are Gaussian, generated block by block from ``seeds``; the last ``outliers``
    rows are all ones, so their measurements are sum(x) (Jalal et al.'s corrupted rows). Output: B x m.
    Subclasses say how the Gaussian product is formed."""

    def __init__(self, seeds: list[int], rows: int, n: int, clean_rows: int, outliers: int):
        super().__init__()
        self.seeds, self.rows, self.n = list(seeds), rows, n
        self.clean_rows, self.outliers = clean_rows, outliers

    def block(self, i: int, out: torch.Tensor | None = None) -> torch.Tensor:
        rows = min(self.rows, self.clean_rows - i * self.rows)
        return gaussian_block(self.seeds[i], rows, self.n, self.clean_rows, out)

    @abc.abstractmethod
    def gaussian(self, flat: torch.Tensor) -> torch.Tensor:
        """flat @ A_gaussian.T: how the subclass holds (or regenerates) the Gaussian rows."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = (2.0 * x - 1.0).flatten(1)
        bad = flat.sum(1, keepdim=True).expand(-1, self.outliers)
        return torch.cat([self.gaussian(flat), bad], 1)

    def matrix(self) -> torch.Tensor:
        """The whole m x n matrix (for tests and small problems)."""
        good = [self.block(i) for i in range(len(self.seeds))]
        return torch.cat([*good, torch.ones(self.outliers, self.n)])


class DenseGaussian(CompressiveSensing):
    """A's Gaussian rows stored once as a buffer (moves with ``.to(device)``): one matmul per product."""

    def __init__(self, seeds: list[int], rows: int, n: int, clean_rows: int, outliers: int):
        super().__init__(seeds, rows, n, clean_rows, outliers)
        self.register_buffer("weight", torch.cat([self.block(i) for i in range(len(self.seeds))]))

    def gaussian(self, flat: torch.Tensor) -> torch.Tensor:
        return flat @ self.weight.T

    def matrix(self) -> torch.Tensor:
        return torch.cat([self.weight, torch.ones(self.outliers, self.n, device=self.weight.device)])


class _BlockedProduct(torch.autograd.Function):
    """flat @ A.T with A regenerated block by block in forward and again in backward (nothing saved but x)."""

    @staticmethod
    def forward(ctx, flat: torch.Tensor, op: "BlockedGaussian") -> torch.Tensor:
        ctx.op = op
        buf = torch.empty(op.rows, op.n)  # one block's memory, refilled (glibc would otherwise keep ~all of A)
        return torch.cat([flat @ op.block(i, buf).to(flat).T for i in range(len(op.seeds))], 1)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple:
        op, out, buf = ctx.op, None, torch.empty(ctx.op.rows, ctx.op.n)
        for i in range(len(op.seeds)):
            a = op.block(i, buf).to(grad)
            part = grad[:, i * op.rows: i * op.rows + a.shape[0]] @ a
            out = part if out is None else out + part
        return out, None


class BlockedGaussian(CompressiveSensing):
    """The same A as ``DenseGaussian`` for the same seeds, never stored: every product (forward and backward)
    regenerates each row block from its seed on the CPU into one reused buffer (a fresh 16 MiB tensor per
    block let glibc's malloc keep them: 0.9 GB peak at 256 px; with the buffer, 65 MiB above the baseline).

    Trade-off: memory is one block (``CS_BLOCK_BYTES``) instead of m*n*4 bytes (0.8 GB at 256 px RGB,
    m = 1000), paid for by generating all m*n Gaussians twice per fit step per latent (forward + backward),
    which dominates a step's time on a CPU (measured: 3.6 s per product at 256 px RGB, m = 1000, on 2 cores).
    Where memory allows (a GPU), raise ``dense_limit`` instead."""

    def gaussian(self, flat: torch.Tensor) -> torch.Tensor:
        return _BlockedProduct.apply(flat, self)


def cs_operator(measurements: int, outliers: int, n: int, g: torch.Generator,
                dense_limit: int = CS_DENSE_LIMIT, block_bytes: int = CS_BLOCK_BYTES) -> CompressiveSensing:
    """A (measurements x n) with ``outliers`` corrupted rows; dense if its float32 size is <= ``dense_limit``.

    Block seeds are drawn from ``g`` (the problem's (image, task, seed) generator), so A is reproducible and
    the same whichever form holds it."""
    check_int("measurements", measurements, 1)
    check_int("outliers", outliers, 0)
    if measurements > n:
        raise ConfigError("measurements", f"{measurements} must be <= the image dimension {n} (H*W*C)")
    if outliers >= measurements:
        raise ConfigError("outliers", f"{outliers} must be < measurements ({measurements}); allowed: 0 .. "
                                      f"{measurements - 1}")
    clean_rows, rows = measurements - outliers, block_rows(n, block_bytes)
    seeds = torch.randint(0, 2**62, (math.ceil(clean_rows / rows),), generator=g).tolist()
    kind = DenseGaussian if measurements * n * 4 <= dense_limit else BlockedGaussian
    return kind(seeds, rows, n, clean_rows, outliers)


def cs_task(measurements: int = CS_MEASUREMENTS, outliers: int = CS_OUTLIERS, noise_std: float = CS_NOISE_STD,
            dense_limit: int = CS_DENSE_LIMIT) -> Task:
    """Compressive sensing with ``measurements`` rows of which ``outliers`` are corrupted (paper Table 1:
    1000 and 20). The observation is 1 x m (not an image), its baseline mid-grey (the zero estimate in
    [-1, 1]). Affine in x in [0, 1] (A (2x - 1)), hence ``linear=False``."""
    check_positive("noise_std", noise_std, allow_zero=True)

    def degrade(x: torch.Tensor, clean: np.ndarray, g: torch.Generator, keep_mask) -> tuple:
        op = cs_operator(measurements, outliers, x[0].numel(), g, dense_limit)
        y = op(x)
        noise = torch.randn(1, op.clean_rows, generator=g) * noise_std
        y = torch.cat([y[:, :op.clean_rows] + noise, torch.full((1, outliers), CS_OUTLIER_VALUE)], 1)
        return op, y, torch.full_like(x, 0.5)

    return Task(degrade, iters=1500, reg_noise_std=0.0, ema=None, backtrack=False, linear=False)


def make_cs_problem(clean: np.ndarray, seed: int, measurements: int = CS_MEASUREMENTS,
                    outliers: int = CS_OUTLIERS, noise_std: float = CS_NOISE_STD,
                    dense_limit: int = CS_DENSE_LIMIT) -> Problem:
    """``make_problem("cs", ...)`` for any m: seeded by the same (image content, "cs", seed), so the defaults
    give the registered task's problem exactly."""
    entry = cs_task(measurements, outliers, noise_std, dense_limit)
    x = to_tensor(clean)
    g = torch.Generator().manual_seed(stable_seed("observation", pixel_hash(clean), "cs", seed))
    operator, observation, baseline = entry.degrade(x, clean, g, None)
    return Problem("cs", operator, observation, x, baseline)


TASKS.register("cs", cs_task())
TASKS.register("inpaint_centre", Task(_inpaint_centre, iters=INPAINT_CENTRE_ITERS, reg_noise_std=0.03, ema=None,
                                      backtrack=False))
