"""Image quality metrics (docs/science.md section 3): scikit-image for the reported numbers (imported on first use: it
loads scipy, which checking a config does not need).

``psnr_torch`` is the same formula on tensors, used inside the fit loop to track the oracle peak every
step without a numpy round trip; a test pins it to scikit-image.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch

# The version of this module's results (lipsweep.core.versions): raise it in the commit that changes them.
ALGORITHM = 1

SR_SHAVE = 4


def psnr(output: np.ndarray, clean: np.ndarray) -> float:
    from skimage.metrics import peak_signal_noise_ratio

    return float(peak_signal_noise_ratio(clean.astype(np.float64), np.clip(output, 0, 1).astype(np.float64),
                                         data_range=1.0))


def ssim(output: np.ndarray, clean: np.ndarray) -> float:
    from skimage.metrics import structural_similarity

    return float(structural_similarity(clean.astype(np.float64), np.clip(output, 0, 1).astype(np.float64),
                                       channel_axis=-1, data_range=1.0))


def luma(pixels: np.ndarray) -> np.ndarray:
    """ITU-R BT.601 Y in [16/255, 235/255], as SR papers evaluate (a grey image: R = G = B = its channel)."""
    if pixels.shape[-1] == 1:
        return 16.0 / 255.0 + 219.0 / 255.0 * pixels[..., 0]
    r, g, b = pixels[..., 0], pixels[..., 1], pixels[..., 2]
    return 16.0 / 255.0 + (65.481 * r + 128.553 * g + 24.966 * b) / 255.0


def y_psnr(output: np.ndarray, clean: np.ndarray, shave: int = SR_SHAVE) -> float:
    """PSNR on the Y channel with ``shave`` border pixels removed (SR convention)."""
    from skimage.metrics import peak_signal_noise_ratio

    s = slice(shave, -shave) if shave else slice(None)
    return float(peak_signal_noise_ratio(luma(clean.astype(np.float64))[s, s],
                                         luma(np.clip(output, 0, 1).astype(np.float64))[s, s], data_range=1.0))


def psnr_torch(output: torch.Tensor, clean: torch.Tensor) -> float:
    mse = ((output.detach().clamp(0, 1) - clean) ** 2).mean().item()
    return float("inf") if mse == 0 else float(-10.0 * np.log10(mse))


def ssim_torch(output: torch.Tensor, clean: torch.Tensor, win: int = 7) -> float:
    """scikit-image's default SSIM (7x7 uniform window, sample covariance, K1 0.01, K2 0.03, border windows
    dropped, channels averaged) on 1xCxHxW tensors: on the fit's device, so a curve point costs no copy."""
    import torch

    x, y = output.detach().clamp(0, 1).double(), clean.double()
    c1, c2, n = 0.01 ** 2, 0.03 ** 2, win * win
    mean = lambda t: torch.nn.functional.avg_pool2d(t, win, stride=1)  # noqa: E731 - a local shorthand
    ux, uy = mean(x), mean(y)
    cov = n / (n - 1)
    vx, vy, vxy = cov * (mean(x * x) - ux * ux), cov * (mean(y * y) - uy * uy), cov * (mean(x * y) - ux * uy)
    s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux * ux + uy * uy + c1) * (vx + vy + c2))
    return float(s.mean().item())


def y_psnr_torch(output: torch.Tensor, clean: torch.Tensor, shave: int = SR_SHAVE) -> float:
    """``y_psnr`` on 1x3xHxW tensors, cheap enough to run every step (the SR oracle peak needs it)."""
    import torch

    rgb = torch.tensor([65.481, 128.553, 24.966], device=output.device)
    weights = (rgb if output.shape[1] == 3 else rgb.sum().reshape(1)).view(1, -1, 1, 1) / 255.0
    s = slice(shave, -shave) if shave else slice(None)
    ya = (output.detach().clamp(0, 1) * weights).sum(1)[..., s, s]
    yb = (clean * weights).sum(1)[..., s, s]
    mse = torch.mean((ya - yb) ** 2).item()
    return float("inf") if mse == 0 else float(-10.0 * np.log10(mse))
