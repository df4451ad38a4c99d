import numpy as np
import pytest
import torch
from conftest import tiny_run

from lipsweep.fitting.fit import run
from lipsweep.problems.images import load_image, load_mask_image
from lipsweep.problems.metrics import psnr
from lipsweep.problems.operators import Lanczos2Downsampler, lanczos2_kernel
from lipsweep.problems.tasks import make_problem, to_pixels


@pytest.mark.parametrize("factor", [4, 8])
def test_lanczos2_kernel_is_normalised_symmetric_and_4f_wide(factor):
    k = lanczos2_kernel(factor)
    assert k.shape == (4 * factor, 4 * factor)
    assert k.sum().item() == pytest.approx(1.0, abs=1e-6)
    assert torch.allclose(k, k.flip(0)) and torch.allclose(k, k.T)
    # Lanczos2 has negative lobes: the outer taps are < 0
    assert k[0, k.shape[0] // 2] < 0


def test_lanczos2_values_are_dips_kernel():
    """Values of DIP's get_kernel(4, 'lanczos', phase=0.5, kernel_width=17, support=2), computed once with its
    code and written down: the centre row, the corner and the centre."""
    row = [-0.00025538, -0.00233759, -0.00488627, -0.0035664, 0.00589547, 0.02364954, 0.04389477, 0.05746142]
    k = lanczos2_kernel(4).numpy()
    assert np.allclose(k[7, :8], row, atol=5e-9) and np.allclose(k[7, 8:], row[::-1], atol=5e-9)
    assert k[0, 0] == pytest.approx(1.1350403751475116e-06, abs=1e-11)
    assert k[7, 7] == pytest.approx(0.057461418991842386, abs=1e-9)


def test_x4_maps_512x384_to_128x96_and_x8_to_64x48():
    x = torch.rand(1, 3, 384, 512)
    assert Lanczos2Downsampler(4)(x).shape == (1, 3, 96, 128)
    assert Lanczos2Downsampler(8)(x).shape == (1, 3, 48, 64)


def test_downsampler_keeps_constants_constant():
    x = torch.full((1, 3, 64, 64), 0.3)
    assert torch.allclose(Lanczos2Downsampler(4)(x), torch.full((1, 3, 16, 16), 0.3), atol=1e-6)


def test_inpainting_hides_half_the_entries_and_its_loss_never_sees_them():
    clean = load_image("Set5/baby", size=128).pixels
    p = make_problem("inpaint", clean, seed=0)
    known = p.operator.mask.bool()
    assert known.shape == (1, 3, 128, 128) and abs(known.float().mean().item() - 0.5) < 0.01
    assert (known[0, 0] != known[0, 1]).float().mean() > 0.4  # per pixel and channel, not per pixel
    assert torch.count_nonzero(p.observation[~known]) == 0 and torch.equal(p.observation[known], p.clean[known])
    assert p.loss(p.clean).item() == 0.0
    hidden_changed, known_changed = p.clean.clone(), p.clean.clone()
    hidden_changed[~known] = 1.0 - hidden_changed[~known]
    known_changed[known] = 1.0 - known_changed[known]
    assert p.loss(hidden_changed).item() == 0.0  # a hidden entry cannot move the loss
    assert p.loss(known_changed).item() > 0.05


@pytest.mark.platform
def test_dip_fills_the_hidden_entries_from_the_known_ones():
    """The point of inpainting: on the entries the loss never saw, a short DIP fit beats the observation's
    zeros and a per-channel mean fill by a wide margin (docs/science.md section 2: inpainting)."""
    result, prep = run(tiny_run("inpaint", iters=300))
    p = prep.problem
    hidden = ~p.operator.mask.bool()
    restored = torch.from_numpy(result.final).permute(2, 0, 1).unsqueeze(0)
    mean_fill = (p.observation.sum((2, 3), keepdim=True) / p.operator.mask.sum((2, 3), keepdim=True)).expand_as(p.clean)

    def hidden_psnr(x: torch.Tensor) -> float:
        return float(-10 * torch.log10(((x - p.clean)[hidden] ** 2).mean()))

    assert hidden_psnr(restored) > hidden_psnr(p.observation) + 10.0  # measured +20.8..+21.4 (3 kernel sets)
    assert hidden_psnr(restored) > hidden_psnr(mean_fill) + 10.0  # measured +14.0..+14.6 over the kernel sets


def test_inpainting_with_the_dip_kate_mask():
    img = load_image("DIP/inpainting/kate", size=128)
    keep = load_mask_image("DIP/kate_mask", img.pixels.shape[:2], size=128)
    p = make_problem("inpaint", img.pixels, seed=0, keep_mask=keep)
    assert p.operator.mask.mean().item() == pytest.approx(0.957, abs=0.01)


def test_denoising_observation_is_about_20_2_db_at_256_px():
    clean = load_image("DIP/F16_GT", size=256).pixels
    p = make_problem("denoise", clean, seed=0)
    # sigma 25/255 alone is 20.17 dB; clipping to [0, 1] removes a little of the noise
    noise = p.observation - p.clean
    assert 20.1 < psnr(to_pixels(p.observation), clean) < 20.5
    assert noise.abs().max() > 3 * 25 / 255
    # on a mid-grey image nothing clips (|noise| > 0.5 is a 5-sigma draw): the task's own observation is the
    # noise itself, 10 log10(1 / (25/255)^2) = 20.17 dB (+-0.05 dB: 196608 draws put the MSE within ~0.3%)
    grey = np.full_like(clean, 0.5)
    noisy = make_problem("denoise", grey, seed=0).observation
    assert 0 < noisy.min() and noisy.max() < 1
    assert psnr(to_pixels(noisy), grey) == pytest.approx(20.17, abs=0.05)


def test_observation_is_a_function_of_task_and_seed():
    clean = load_image("Set5/baby", size=64).pixels
    a = make_problem("denoise", clean, seed=3).observation
    torch.manual_seed(999)  # the global RNG must not matter
    b = make_problem("denoise", clean, seed=3).observation
    c = make_problem("denoise", clean, seed=4).observation
    assert torch.equal(a, b) and not torch.equal(a, c)
    m1 = make_problem("inpaint", clean, seed=3).operator.mask
    m2 = make_problem("inpaint", clean, seed=3).operator.mask
    assert torch.equal(m1, m2)


@pytest.mark.parametrize("task,factor", [("sr4", 4), ("sr8", 8)])
def test_sr_observation_is_the_low_resolution_image(task, factor):
    clean = load_image("Set5/baby", size=128).pixels
    p = make_problem(task, clean, seed=0)
    assert p.observation.shape == (1, 3, 128 // factor, 128 // factor)
    assert p.baseline.shape == p.clean.shape
    # the operator applied to the clean image is close to the Lanczos-resized observation
    assert torch.mean((p.operator(p.clean) - p.observation) ** 2).item() < 1e-3
