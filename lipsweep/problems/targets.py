"""What a fit is fitted to (paper Fig. 10, after DIP's Fig. 2): the image itself, the image with noise, the
same pixels randomly permuted, or uniform white noise of its shape. A target replaces the clean image *before* the task degrades
it, so it is also what metrics compare with: ``task: fit`` fits the target as it is, ``task: denoise`` with
``target: image`` is the paper's "noisy image" case. A target is a registry entry (one ``register`` call;
a user's plugin can add one)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np

from lipsweep.core.registry import Registry

if TYPE_CHECKING:
    import torch

# The version of this module's results (lipsweep.core.versions): raise it in the commit that changes them.
ALGORITHM = 2  # 2: the noisy target's noise drawn in float64 (issue 24)

DENOISE_SIGMA = 25.0 / 255.0  # docs/science.md section 2 (the denoising task draws the same noise level)

Target = Callable[[np.ndarray, "torch.Generator"], np.ndarray]  # (HxWxC clean in [0, 1], generator) -> HxWxC

TARGETS: Registry[Target] = Registry("target")


@TARGETS.register("image")
def _image(clean: np.ndarray, g: torch.Generator) -> np.ndarray:
    return clean


@TARGETS.register("noisy")
def _noisy(clean: np.ndarray, g: torch.Generator) -> np.ndarray:
    """The image plus N(0, (25/255)^2) noise, clipped: the denoising observation, fitted as it is.

    Drawn in float64: torch's float32 normal sampler differs in its last bits between CPU kernel sets, and the
    task then seeds its own noise from this target's pixel hash, so a last bit became a different draw (version
    1: ``ATEN_CPU_CAPABILITY=default`` and AVX-512 gave other observations). Float64 samples rounded to float32
    are the same on every CPU."""
    import torch

    noise = torch.randn(clean.shape, generator=g, dtype=torch.float64).numpy() * DENOISE_SIGMA
    return np.clip(clean + noise, 0.0, 1.0).astype(np.float32)


@TARGETS.register("permuted")
def _permuted(clean: np.ndarray, g: torch.Generator) -> np.ndarray:
    """The image's pixels (all channels of a pixel together) in a random order: same histogram, no structure."""
    import torch

    h, w, c = clean.shape
    order = torch.randperm(h * w, generator=g).numpy()
    return np.ascontiguousarray(clean.reshape(h * w, c)[order].reshape(h, w, c))


@TARGETS.register("noise")
def _noise(clean: np.ndarray, g: torch.Generator) -> np.ndarray:
    """Uniform white noise in [0, 1], independent per pixel and channel."""
    import torch

    return torch.rand(clean.shape, generator=g).numpy().astype(np.float32)
