"""Seeds batched into one fit (lipsweep.fitting.batched) against the same seeds fitted one by one with ``fit.run``.

The equality tests run in float64. In float32, DIP + Adam is chaotic in the float summation order: many
gradients are mathematically zero (conv biases before BatchNorm, scale-invariant BN weights, merge-BN
biases) and Adam's normalisation turns their ~1e-9 rounding noise into steps of size lr. Any change of
order (1 vs 2 threads, oneDNN vs native convolutions, vmap's grouped convolutions) moves a 30-step width-8
fit by up to ~0.5 dB (measured: 1 vs 2 threads 0.04-0.56 dB psnr_final, batched vs one by one 0.01-0.29
dB), so float32 equality would test the kernels, not the algorithm. In float64 that noise stays far below
Adam's eps, and the batched fits match the separate ones to ~5e-10 dB, outputs to ~6e-9 (asserted: 1e-6).
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from conftest import tiny_run

from lipsweep.core.errors import ConfigError
from lipsweep.fitting.batched import _Stack, check_seed_batch, fit_batch, fit_seeds
from lipsweep.fitting.fit import Prepared, fit, prepare, run
from lipsweep.fitting.outputs import FitResult
from lipsweep.priors import conv_weights

DB = 1e-6  # dB (and loss, SSIM): measured max |diff| 5e-10 (denoise with backtracking), <1e-12 (others)
ATOL = 1e-6  # output pixels: measured max |diff| 6e-9 (denoise with backtracking), <3e-12 (others)
TIMING = {"seconds", "iters_per_second"}


def _double(prep: Prepared) -> Prepared:
    """The prepared fit in float64 (the same theta_0, z and observation, cast)."""
    p = prep.problem
    problem = replace(p, operator=p.operator.double(), observation=p.observation.double(), clean=p.clean.double(),
                      baseline=p.baseline.double())
    return Prepared(prep.model.double(), prep.z.double(), problem, prep.notes)


def _assert_same(alone: FitResult, batched: FitResult) -> None:
    assert alone.metrics.keys() == batched.metrics.keys()
    for key, value in alone.metrics.items():
        if key not in TIMING:
            assert batched.metrics[key] == pytest.approx(value, abs=DB), key
    assert [p["iter"] for p in alone.curve] == [p["iter"] for p in batched.curve]
    for a, b in zip(alone.curve, batched.curve):
        assert a.keys() == b.keys() and all(b[k] == pytest.approx(a[k], abs=DB) for k in a)
    np.testing.assert_allclose(batched.final, alone.final, rtol=0, atol=ATOL)
    np.testing.assert_allclose(batched.best, alone.best, rtol=0, atol=ATOL)
    if alone.ema is not None:
        np.testing.assert_allclose(batched.ema, alone.ema, rtol=0, atol=ATOL)


def _masks(cfg, densities: list[float | None]) -> list[dict[str, torch.Tensor] | None]:
    """A random mask per seed (None: dense); a different draw for each."""
    weights = conv_weights(prepare(cfg).model)
    out = []
    for i, d in enumerate(densities):
        g = torch.Generator().manual_seed(100 + i)
        out.append(None if d is None else {n: torch.rand(w.shape, generator=g) < d for n, w in weights.items()})
    return out


def test_denoise_seeds_with_backtracking_match_separate_fits():
    """Each seed backtracks on its own (restoring only its own parameters and Adam state): the counts differ
    between seeds and match the separate fits', as do every metric, curve point and output."""
    cfgs = [tiny_run("denoise", iters=16, width=4, seed=s, lr=0.1, backtrack_every=2, backtrack_db=0.1)
            for s in (0, 1, 2)]
    alone = [run(c, prep=_double(prepare(c)))[0] for c in cfgs]
    batched = fit_seeds(cfgs, preps=[_double(prepare(c)) for c in cfgs])
    for a, (b, _) in zip(alone, batched):
        _assert_same(a, b)
        assert b.extra["seed_batch"] == 3
    counts = [b.metrics["backtracks"] for b, _ in batched]
    assert any(counts) and len(set(counts)) > 1, counts  # the test exercises per-seed backtracking
    psnr = [b.metrics["psnr_final"] for b, _ in batched]
    assert len(set(np.round(psnr, 6))) == 3  # different seeds, different fits
    assert not np.allclose(batched[0][0].final, batched[1][0].final, atol=1e-3)


def test_inpaint_masks_per_seed_are_honoured():
    """A different mask per seed, one seed dense: pruned weights exactly zero in the seeds that prune them,
    untouched in the dense seed, and every seed equal to its separate masked fit."""
    cfgs = [tiny_run("inpaint", iters=10, width=4, seed=s) for s in (3, 4, 5)]
    masks = _masks(cfgs[0], [0.3, None, 0.6])
    alone = [run(c, m, prep=_double(prepare(c)))[0] for c, m in zip(cfgs, masks)]
    batched = fit_seeds(cfgs, masks, preps=[_double(prepare(c)) for c in cfgs])
    for a, (b, _) in zip(alone, batched):
        _assert_same(a, b)
    for (_, prep), mask in zip(batched, masks):
        weights = conv_weights(prep.model)
        if mask is None:
            assert all(bool(w.ne(0).all()) for w in weights.values())
            continue
        for name, m in mask.items():
            w = weights[name].detach()
            assert torch.count_nonzero(w[~m]) == 0, name
            assert bool(w[m].ne(0).all()), name
    nonzero = [b.metrics["nonzero_params"] for b, _ in batched]
    assert nonzero[0] < nonzero[2] < nonzero[1]


@pytest.mark.parametrize("task, extra", [("denoise", {"param_noise": 2.0, "burnin": 4, "sample_every": 2}),
                                         ("sr4", {})], ids=["sgld", "sr4"])
def test_sgld_and_sr_seeds_match_separate_fits(task, extra):
    """SGLD's weight noise comes from each seed's own generator, in the order a separate fit draws it."""
    cfgs = [tiny_run(task, iters=10, width=4, seed=s, **extra) for s in (0, 1)]
    alone = [run(c, prep=_double(prepare(c)))[0] for c in cfgs]
    for a, (b, _) in zip(alone, fit_seeds(cfgs, preps=[_double(prepare(c)) for c in cfgs])):
        _assert_same(a, b)


def test_float32_batch_runs_like_run():
    """The production dtype: the same metrics as ``run``, close (float32 order noise, see the module doc;
    measured 2e-5 dB at 8 steps). A mask that prunes a whole conv takes fit.py's sanitising path; such a fit
    is chaotic even in float64 (BatchNorm of a constant scales rounding noise by 1/sqrt(eps) per layer), so
    that seed is checked for its mask and finite outputs only."""
    cfgs = [tiny_run("denoise", iters=8, width=4, seed=s) for s in (0, 1)]
    masks = _masks(cfgs[0], [None, 0.5])
    masks[1]["levels.1.down2.conv"][:] = False
    alone = run(cfgs[0])[0]
    (first, _), (emptied, prep) = fit_seeds(cfgs, masks)
    assert alone.metrics.keys() == first.metrics.keys()
    assert first.metrics["psnr_ema"] == pytest.approx(alone.metrics["psnr_ema"], abs=0.05)
    assert emptied.metrics["empty_layers"] == 1 and np.isfinite(emptied.final).all()
    assert torch.count_nonzero(conv_weights(prep.model)["levels.1.down2.conv"]) == 0


def test_snapshots_and_channels_last_layout():
    """Rewinding snapshots (weights and BN statistics) match ``fit``'s; the CUDA channels_last layout
    (checked here on CPU through the stack itself) changes no value of the forward pass or its gradients."""
    cfgs = [tiny_run("denoise", iters=4, width=4, seed=s) for s in (0, 1)]
    preps = [_double(prepare(c)) for c in cfgs]
    alone = [fit(p.model, p.z, p.problem, c.fit, seed=c.seed, snapshot_at=(2,))
             for c, p in zip(cfgs, [_double(prepare(c)) for c in cfgs])]
    batched = fit_batch([p.model for p in preps], [p.z for p in preps], [p.problem for p in preps], cfgs[0].fit,
                        [0, 1], snapshot_at=(2,))
    for a, b in zip(alone, batched):
        for k, v in a.extra["snapshots"][2].items():
            assert torch.allclose(b.extra["snapshots"][2][k].to(v.dtype), v, atol=1e-9), k
    models = [_double(prepare(c)).model.train() for c in cfgs]
    stack = _Stack(models, channels_last=True)
    zs = [p.z for p in preps]
    assert torch.allclose(stack(zs), stack(zs, channels_last=False), rtol=0, atol=1e-12)
    assert stack.check_layout(zs) < 1e-12  # measured ~3e-15 relative to the largest gradient


def test_refusals_name_the_field():
    base = tiny_run("denoise", iters=10, width=4)
    with pytest.raises(ConfigError, match="iters"):
        check_seed_batch([base, replace(base, seed=1, fit=replace(base.fit, iters=11))])
    with pytest.raises(ConfigError, match="seed"):
        check_seed_batch([base, base])
    for flag in ("bf16", "channels_last"):
        with pytest.raises(ConfigError, match=flag):
            check_seed_batch([base, replace(base, seed=1)], **{flag: True})
    with pytest.raises(ValueError, match="one z, problem, seed and mask per model"):
        fit_batch([], [], [], base.fit, [])
