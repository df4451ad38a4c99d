"""Restoration tasks as forward operators: y = A(x) (+ noise), loss = mean ||A(f(z)) - y||^2 (docs/science.md section 2).

One fit loop serves every task; only the operator changes (deepinv's rhythm). A task is a registry entry:
how it degrades a clean image, what its operator does to shapes, and the DIP fit defaults of docs/science.md section 2 for it.
Randomness comes from a generator seeded by (image content, task, seed): the observation is identical for
every trial that shares them, and two images never share a noise field or a Bernoulli mask (multi-image
IMP averages independent noise away, docs/science.md section 3).

The operators themselves are torch modules in ``operators.py`` (versioned by this module's ``ALGORITHM``),
imported when a problem is made: declaring and checking tasks needs no torch. Import them from
``lipsweep.problems.operators``; this module imports them only inside its functions.
"""

from __future__ import annotations

import hashlib
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from lipsweep.core.errors import check_positive
from lipsweep.core.registry import Registry
from lipsweep.problems.targets import DENOISE_SIGMA, TARGETS

if TYPE_CHECKING:
    import torch
    from torch import nn

# The version of this module's results (lipsweep.core.versions): raise it in the commit that changes them.
ALGORITHM = 1

INPAINT_KEEP = 0.5


def pixel_hash(pixels: np.ndarray) -> str:
    """sha256 of an image's float32 pixels (16 hex digits): what "image content" means for seeding."""
    return hashlib.sha256(np.ascontiguousarray(pixels, dtype=np.float32).tobytes()).hexdigest()[:16]


def stable_seed(*parts: object) -> int:
    """A seed that depends only on its parts (not on Python's randomised hash)."""
    return zlib.crc32("|".join(map(str, parts)).encode()) & 0x7FFFFFFF


@dataclass(frozen=True)
class Problem:
    """A degraded observation with its operator; ``clean`` is for scoring only, never for fitting."""

    task: str
    operator: nn.Module
    observation: torch.Tensor  # 1x3xhxw
    clean: torch.Tensor  # 1x3xHxW
    baseline: torch.Tensor  # 1x3xHxW: the observation shown at full size, for psnr_observation

    def loss(self, output: torch.Tensor) -> torch.Tensor:
        from torch.nn import functional as F

        return F.mse_loss(self.operator(output), self.observation)


def to_tensor(pixels: np.ndarray) -> torch.Tensor:
    import torch

    return torch.from_numpy(np.ascontiguousarray(pixels)).permute(2, 0, 1).unsqueeze(0).to(torch.get_default_dtype())


def to_pixels(t: torch.Tensor) -> np.ndarray:
    return t.detach().squeeze(0).permute(1, 2, 0).clamp(0, 1).cpu().numpy()


def _lanczos_resize(pixels: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """PIL Lanczos on 8-bit RGB (or grey), as DIP makes its low-resolution inputs (``get_low_res``)."""
    arr = np.clip(np.rint(pixels * 255), 0, 255).astype(np.uint8)
    img = Image.fromarray(arr[..., 0] if arr.shape[-1] == 1 else arr)
    out = np.asarray(img.resize(size, Image.LANCZOS), dtype=np.float32) / 255.0
    return out[..., None] if out.ndim == 2 else out


Degrade = Callable[["torch.Tensor", np.ndarray, "torch.Generator", "np.ndarray | None"],
                   tuple["nn.Module", "torch.Tensor", "torch.Tensor"]]


@dataclass(frozen=True)
class Task:
    """A registry entry. ``degrade(x, clean, generator, keep_mask)`` returns (operator, observation, baseline);
    the operator maps 1x3xHxW to 1x3x(H/scale)x(W/scale) and is linear where ``linear`` says so.
    ``iters`` .. ``backtrack`` are the DIP defaults of docs/science.md section 2; ``y_psnr`` adds the SR metrics."""

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
    import torch

    from lipsweep.problems.operators import Identity

    y = (x + torch.randn(x.shape, generator=g) * DENOISE_SIGMA).clamp(0, 1)
    return Identity(), y, y


def _fit(x: torch.Tensor, clean: np.ndarray, g: torch.Generator, keep_mask) -> tuple:
    from lipsweep.problems.operators import Identity

    return Identity(), x, x


def _inpaint(x: torch.Tensor, clean: np.ndarray, g: torch.Generator, keep_mask) -> tuple:
    """Bernoulli(0.5) per pixel and channel, or a given HxW mask image (white = known)."""
    import torch

    from lipsweep.problems.operators import Masking

    if keep_mask is None:
        mask = (torch.rand(x.shape, generator=g) < INPAINT_KEEP).to(x.dtype)
    else:
        mask = torch.from_numpy(keep_mask).to(x.dtype).expand_as(x[0]).unsqueeze(0).contiguous()
    op = Masking(mask)
    y = op(x)
    return op, y, y


def _super_resolution(factor: int) -> Degrade:
    def degrade(x: torch.Tensor, clean: np.ndarray, g: torch.Generator, keep_mask) -> tuple:
        """The low-res input is a PIL Lanczos resize, as DIP makes it; the operator is its Lanczos2 conv."""
        from lipsweep.problems.operators import Lanczos2Downsampler

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
    import torch

    entry = TASKS.get(task)
    if target != "image":
        g = torch.Generator().manual_seed(stable_seed("target", pixel_hash(clean), target, seed))
        clean = TARGETS.get(target)(clean, g)
    x = to_tensor(clean)
    g = torch.Generator().manual_seed(stable_seed("observation", pixel_hash(clean), task, seed))
    operator, observation, baseline = entry.degrade(x, clean, g, keep_mask)
    return Problem(task, operator, observation, x, baseline)


# Generator-prior tasks (paper Section 5, Table 1), fitted by latent optimisation (lipsweep.fitting.latent).
# CS follows the paper's own script (VITA-Group/Chasing-Better-DIPs, Compressed_sensing_GAN/src/
# Eval_sparse_PGAN_on_CS.py, after Jalal et al. 2020): 980 Gaussian rows N(0, 1/980) plus 20 outlier rows
# that are all ones with observation 10000, noise std 0.01 on the clean rows only, x in [-1, 1] flattened.
CS_MEASUREMENTS = 1000
CS_OUTLIERS = 20
CS_NOISE_STD = 0.01
CS_OUTLIER_VALUE = 10000.0
INPAINT_CENTRE_ITERS = 1500


def _inpaint_centre(x: torch.Tensor, clean: np.ndarray, g: torch.Generator, keep_mask) -> tuple:
    """Generator inpainting with a fixed hole (Fig. 8b); the paper's script uses DIP's kate mask image instead,
    which the ``inpaint`` task takes as ``inpaint_mask``."""
    from lipsweep.problems.operators import Masking, centre_mask

    op = Masking(centre_mask(x))
    y = op(x)
    return op, y, y


def cs_task(measurements: int = CS_MEASUREMENTS, outliers: int = CS_OUTLIERS, noise_std: float = CS_NOISE_STD,
            dense_limit: int | None = None) -> Task:
    """Compressive sensing with ``measurements`` rows of which ``outliers`` are corrupted (paper Table 1:
    1000 and 20). The observation is 1 x m (not an image), its baseline mid-grey (the zero estimate in
    [-1, 1]). Affine in x in [0, 1] (A (2x - 1)), hence ``linear=False``. ``dense_limit`` None: the
    operators' ``CS_DENSE_LIMIT``."""
    check_positive("noise_std", noise_std, allow_zero=True)

    def degrade(x: torch.Tensor, clean: np.ndarray, g: torch.Generator, keep_mask) -> tuple:
        import torch

        from lipsweep.problems.operators import cs_operator

        op = cs_operator(measurements, outliers, x[0].numel(), g, *([] if dense_limit is None else [dense_limit]))
        y = op(x)
        noise = torch.randn(1, op.clean_rows, generator=g) * noise_std
        y = torch.cat([y[:, :op.clean_rows] + noise, torch.full((1, outliers), CS_OUTLIER_VALUE)], 1)
        return op, y, torch.full_like(x, 0.5)

    return Task(degrade, iters=1500, reg_noise_std=0.0, ema=None, backtrack=False, linear=False)


def make_cs_problem(clean: np.ndarray, seed: int, measurements: int = CS_MEASUREMENTS,
                    outliers: int = CS_OUTLIERS, noise_std: float = CS_NOISE_STD,
                    dense_limit: int | None = None) -> Problem:
    """``make_problem("cs", ...)`` for any m: seeded by the same (image content, "cs", seed), so the defaults
    give the registered task's problem exactly."""
    import torch

    entry = cs_task(measurements, outliers, noise_std, dense_limit)
    x = to_tensor(clean)
    g = torch.Generator().manual_seed(stable_seed("observation", pixel_hash(clean), "cs", seed))
    operator, observation, baseline = entry.degrade(x, clean, g, None)
    return Problem("cs", operator, observation, x, baseline)


TASKS.register("cs", cs_task())
TASKS.register("inpaint_centre", Task(_inpaint_centre, iters=INPAINT_CENTRE_ITERS, reg_noise_std=0.03, ema=None,
                                      backtrack=False))
