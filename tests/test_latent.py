"""Latent optimisation over a fixed generator (paper Section 5) and the tasks it is scored on: the CS matrix's
statistics and reproducibility (dense == blocked), the outlier rows, batched restarts == separate runs,
recovery of x = G(z*) by LS and MOM, MOM's robustness to outliers where LS breaks, and G left untouched."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from lipsweep.core.errors import ConfigError
from lipsweep.fitting.latent import LatentConfig, descend, fit_latent, initial_latents
from lipsweep.problems.operators import BlockedGaussian, DenseGaussian, cs_operator
from lipsweep.problems.tasks import (
    CS_OUTLIER_VALUE,
    make_cs_problem,
    make_problem,
    to_pixels,
)

LATENT = 8


def tiny_generator(seed: int = 0) -> nn.Module:
    """8 -> 1x16x16, output in (-1, 1): small enough that a fit takes about a second."""
    g = torch.Generator().manual_seed(seed)
    net = nn.Sequential(nn.Linear(LATENT, 32), nn.Tanh(), nn.Linear(32, 256), nn.Tanh(), nn.Unflatten(1, (1, 16, 16)))
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=g) / (p.shape[-1] ** 0.5 if p.dim() == 2 else 3.0))
    return net


@pytest.fixture(scope="module")
def scene():
    """A generator and an image in its range, x = G(z*), as HxWx1 in [0, 1]."""
    gen = tiny_generator()
    z_star = torch.randn(1, LATENT, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        clean = to_pixels((gen(z_star) + 1) / 2)
    return gen, clean


def _operator(m: int, n: int, outliers: int = 0, seed: int = 0, **kw):
    return cs_operator(m, outliers, n, torch.Generator().manual_seed(seed), **kw)


def test_cs_matrix_is_gaussian_with_variance_one_over_m_and_fixed_by_the_seed():
    a = _operator(64, 256).matrix()
    assert a.shape == (64, 256)
    assert abs(a.mean().item()) < 3 * (1 / 64) ** 0.5 / 128  # 3 standard errors of the mean of 16384 entries
    assert a.var().item() * 64 == pytest.approx(1.0, abs=0.05)
    assert torch.equal(a, _operator(64, 256).matrix())
    assert not torch.allclose(a, _operator(64, 256, seed=1).matrix())


def test_dense_and_blocked_operators_hold_the_same_matrix_and_gradients():
    small_blocks = 8 * 256 * 4  # 8 rows per block: 8 blocks for 60 clean rows
    dense = _operator(64, 256, outliers=4, block_bytes=small_blocks)
    blocked = _operator(64, 256, outliers=4, block_bytes=small_blocks, dense_limit=0)
    assert isinstance(dense, DenseGaussian) and isinstance(blocked, BlockedGaussian) and len(blocked.seeds) == 8
    assert torch.equal(dense.matrix(), blocked.matrix())
    x = torch.rand(3, 1, 16, 16, requires_grad=True)
    w = torch.randn(3, 64)
    (gd,) = torch.autograd.grad((dense(x) * w).sum(), [x])
    (gb,) = torch.autograd.grad((blocked(x) * w).sum(), [x])
    assert torch.allclose(dense(x), blocked(x), atol=1e-5) and torch.allclose(gd, gb, atol=1e-5)
    assert not any(t.numel() > 0 for t in blocked.buffers())  # nothing stored: A is regenerated per product


def test_exactly_the_outlier_rows_are_corrupted(scene):
    _, clean = scene
    p = make_cs_problem(clean, seed=0, measurements=64, outliers=5, noise_std=0.01)
    a = p.operator.matrix()
    assert p.observation.shape == (1, 64)
    assert (a == 1).all(1).sum().item() == 5 and (a[-5:] == 1).all()
    assert (p.observation == CS_OUTLIER_VALUE).sum().item() == 5
    residual = (p.operator(p.clean) - p.observation)[0]
    assert residual[:59].abs().max().item() < 0.05  # clean rows: noise std 0.01
    assert residual[59:].abs().min().item() > 1000  # corrupted rows: sum(x) vs 10000
    assert torch.equal(make_cs_problem(clean, seed=0, measurements=64, outliers=5).observation, p.observation)


def test_more_measurements_than_pixels_or_outliers_than_measurements_are_refused(scene):
    _, clean = scene
    with pytest.raises(ConfigError) as err:
        make_cs_problem(clean, seed=0, measurements=257, outliers=0)
    assert err.value.field == "measurements" and "256 (H*W*C)" in err.value.message
    with pytest.raises(ConfigError) as err:
        make_cs_problem(clean, seed=0, measurements=64, outliers=64)
    assert err.value.field == "outliers"
    for bad, field in [({"objective": "l1"}, "objective"), ({"restarts": 0}, "restarts"), ({"lr": 0.0}, "lr"),
                       ({"reshuffle": 1}, "reshuffle")]:
        with pytest.raises(ConfigError) as err:
            LatentConfig(**bad)
        assert err.value.field == field
    with pytest.raises(ConfigError) as err:
        fit_latent(tiny_generator(), make_cs_problem(clean, 0, measurements=16, outliers=0), LATENT,
                   LatentConfig(blocks=17), seed=0)
    assert err.value.field == "blocks"


def test_inpaint_centre_keeps_three_quarters_of_the_pixels(scene):
    _, clean = scene
    mask = make_problem("inpaint_centre", np.repeat(clean, 3, axis=2), seed=0).operator.mask
    assert mask.shape == (1, 3, 16, 16) and mask.sum().item() == 0.75 * mask.numel()
    assert mask[..., 4:12, 4:12].sum().item() == 0 and (mask[:, 0] == mask[:, 2]).all()


@pytest.mark.parametrize("objective", ["ls", "mom"])
def test_batched_restarts_follow_the_trajectories_of_separate_runs(scene, objective):
    gen, clean = scene
    p = make_cs_problem(clean, seed=0, measurements=64, outliers=2)
    cfg = LatentConfig(iters=60, restarts=3, objective=objective, blocks=8, reshuffle=objective == "mom")
    zf, zg = initial_latents(LATENT, 3, seed=4)
    batched = descend(gen, p, zf, zg, cfg, seed=4)
    for r in range(3):
        alone = descend(gen, p, zf[r:r + 1], zg[r:r + 1], cfg, seed=4)
        assert torch.allclose(alone.zf[0], batched.zf[r], atol=1e-4)
        assert torch.allclose(alone.zg[0], batched.zg[r], atol=1e-4)
        assert not torch.allclose(zf[r], batched.zf[r], atol=1e-2)  # it did move
    assert torch.equal(initial_latents(LATENT, 1, seed=4)[0][0], zf[0])


@pytest.mark.platform
def test_ls_recovers_a_generated_image_from_clean_measurements(scene):
    gen, clean = scene
    p = make_cs_problem(clean, seed=0, measurements=64, outliers=0)
    res = fit_latent(gen, p, LATENT, LatentConfig(iters=600, restarts=2, objective="ls"), seed=1)
    start = res.curve[0]["mse"]
    assert start > 0.1 and res.metrics["mse"] < 1e-4  # measured: 0.115 -> 2.6e-6..6.3e-6 (3 kernel sets)
    assert res.metrics["psnr"] > 40 and res.metrics["ssim"] > 0.99
    assert "mse_observation" not in res.metrics  # CS observes a vector, not an image


@pytest.mark.platform
def test_mom_recovers_despite_outliers_that_break_least_squares(scene):
    """2% corrupted rows (all-ones rows observed as 10000, the paper's script's outliers), 10 blocks of 20
    (Jalal's block size): MOM recovers x, LS is pulled away from it (worse than where it started)."""
    gen, clean = scene
    p = make_cs_problem(clean, seed=0, measurements=200, outliers=4)
    mom = fit_latent(gen, p, LATENT, LatentConfig(iters=1000, restarts=2, blocks=10), seed=1)
    ls = fit_latent(gen, p, LATENT, LatentConfig(iters=300, restarts=2, objective="ls"), seed=1)
    start = mom.curve[0]["mse"]
    assert start > 0.1 and mom.metrics["mse"] < 1e-3  # measured: 0.115 -> 2.6e-5..6.2e-5 (3 kernel sets)
    assert ls.metrics["mse"] > max(0.3, start)  # measured: 0.43, worse than its start
    assert ls.metrics["mse"] > 100 * mom.metrics["mse"]
    for res in (mom, ls):
        assert res.metrics["mse_oracle"] <= res.metrics["mse"]
        assert {"psnr", "ssim", "loss", "restart", "psnr_oracle", "ssim_oracle", "loss_oracle"} <= set(res.metrics)
    assert [c["iteration"] for c in mom.curve] == list(range(0, 1001, 50))
    assert mom.restored.shape == mom.restored_oracle.shape == (16, 16, 1) and mom.z.shape == (LATENT,)


def test_the_generator_is_left_exactly_as_it_was(scene):
    gen, clean = scene
    gen.train()
    before = {k: v.clone() for k, v in gen.state_dict().items()}
    p = make_problem("inpaint_centre", clean, seed=0)
    res = fit_latent(gen, p, LATENT, LatentConfig(iters=100, restarts=2, objective="ls"), seed=0)
    assert all(torch.equal(before[k], v) for k, v in gen.state_dict().items())
    assert all(p.grad is None for p in gen.parameters()) and all(m.training for m in gen.modules())
    assert res.metrics["mse"] < res.metrics["mse_observation"]  # the masked image: a quarter of it black
    assert res.metrics["mse_oracle"] <= res.metrics["mse"] and res.seconds > 0
