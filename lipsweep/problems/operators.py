"""The tasks' forward operators as torch modules (``tasks.py`` declares the tasks and makes their problems;
its ``ALGORITHM`` versions this code too): imported when a problem is made, so checking a config needs no torch."""

from __future__ import annotations

import abc
import math

import torch
import torch.nn.functional as F
from torch import nn

from lipsweep.core.errors import ConfigError, check_int

CS_DENSE_LIMIT = 256 * 2**20  # bytes of float32 A stored at most; above it A is regenerated per product
CS_BLOCK_BYTES = 16 * 2**20  # one row block of A (the blocked operator's peak extra memory)


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
    return (k2 / k2.sum()).to(torch.get_default_dtype())


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


def centre_mask(x: torch.Tensor) -> torch.Tensor:
    """1 everywhere except a centred H/2 x W/2 rectangle (all channels): a quarter of the pixels is unknown."""
    h, w = x.shape[-2:]
    mask = torch.ones_like(x)
    mask[..., h // 4: h // 4 + h // 2, w // 4: w // 4 + w // 2] = 0.0
    return mask



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
