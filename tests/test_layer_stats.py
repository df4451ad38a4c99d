"""Fig. 7's statistics that can fail (analysis/layers.py), the FFT error spectrum (Figs. 18-19) and Fig. 5's
Y-PSNR cells, on hand-made numbers and width-16 theta_0."""

import numpy as np
import pandas as pd
import pytest
import torch
from lipsweep.analysis.layers import (
    compare,
    cumulative_sparsity,
    frozen_convs,
    theta0_null,
    theta0_weights,
    type_profile,
)
from lipsweep.analysis.stats import transfer_matrix
from lipsweep.analysis.visual import error_high_frequency, high_frequency_ratio

from lipsweep.priors.dip import INPUT_CONVS
from lipsweep.pruning.masks import MaskSet
from lipsweep.pruning.methods import nested_random, random_uniform

SIZES = {"levels.0.skip.conv": 40, "levels.0.down1.conv": 300, "levels.0.down2.conv": 100,
         "levels.0.up1.conv": 200, "levels.0.up2.conv": 50, "head": 10}
DENSITIES = {"levels.0.skip.conv": 0.25, "levels.0.down1.conv": 1.0, "levels.0.down2.conv": 0.0,
             "levels.0.up1.conv": 0.5, "levels.0.up2.conv": 0.2, "head": 1.0}
WIDTH16 = pd.Series({"model": "dip", "width": 16, "seed": 0})


def test_type_profile_weights_each_layer_by_its_size():
    got = type_profile(DENSITIES, SIZES)
    assert got["encoder 3x3"] == pytest.approx(300 / 400)  # the unweighted mean would be 0.5
    assert got["decoder 3x3"] == pytest.approx(0.5) and got["skip 1x1"] == pytest.approx(0.25)
    assert got["decoder 1x1"] == pytest.approx((0.2 * 50 + 10) / 60)
    assert got["all"] == pytest.approx(430 / 700)
    # thirds of the 700 weights in forward order: skip and down1 early, down2 middle, the decoder late
    assert got["early third"] == pytest.approx(310 / 340) and got["middle third"] == pytest.approx(0.0)
    assert got["late third"] == pytest.approx(120 / 260)


def test_type_profile_leaves_out_a_layer_it_has_no_size_for():
    got = type_profile(DENSITIES, {n: s for n, s in SIZES.items() if n != "head"})
    assert got["decoder 1x1"] == pytest.approx(0.2) and type_profile({}, SIZES) == {}


def test_theta0_null_at_width_16_reproduces_the_audit():
    """docs/science.md section 1b: L0 down1 keeps 0.22 at 59% and nothing at 89% (seed 0)."""
    weights = theta0_weights(WIDTH16)
    assert sum(w.numel() for w in weights.values()) == 41456
    for sparsity, expected, tol in ((0.36, 0.53, 0.03), (0.59, 0.22, 0.03), (0.89, 0.0, 0.01)):
        null = theta0_null(weights, {n: 1 - sparsity for n in weights})
        assert null["levels.0.down1.conv"] == pytest.approx(expected, abs=tol)
        kept = sum(null[n] * w.numel() for n, w in weights.items())
        assert kept == pytest.approx(round((1 - sparsity) * 41456), abs=0.5)


def test_theta0_null_keeps_frozen_input_convs_dense_and_the_reference_classifier_reads_rgb():
    weights = theta0_weights(WIDTH16)
    frozen = frozen_convs(pd.Series({"model": "dip", "keep_input_convs": True}))
    assert frozen == INPUT_CONVS
    dens = {n: 1.0 if n in frozen else 0.2 for n in weights}
    null = theta0_null(weights, dens, frozen)
    assert all(null[n] == 1.0 for n in frozen)
    ref = theta0_weights(pd.Series({"model": "dip", "width": 16, "seed": 0, "classify_recipe": "reference"}))
    assert ref["levels.0.down1.conv"].shape[1] == 3
    assert ref["levels.1.down1.conv"].shape == weights["levels.1.down1.conv"].shape
    assert theta0_weights(pd.Series({"model": "no-such-prior"})) is None


@pytest.mark.parametrize("make", ["uniform", "nested"])
def test_a_random_mask_matches_its_expectation(make):
    weights = theta0_weights(WIDTH16)
    dense = MaskSet({n: torch.ones(w.shape, dtype=torch.bool) for n, w in weights.items()})
    keep = round(0.41 * dense.total)
    masks = random_uniform(dense, keep, 3) if make == "uniform" else nested_random(dense, keep, 3)
    rows = {r["group"]: r for r in compare(MaskSet(masks).layer_densities(), weights)}
    tol = 5e-3 if make == "uniform" else 0.06  # uniform: per-layer rounding; nested: binomial, skips hold 384
    assert all(abs(r["excess_random"]) < tol for r in rows.values())
    assert rows["all"]["excess_null"] == pytest.approx(0.0, abs=1e-4)  # the null keeps the same count


def test_reference_cumulative_curve_starts_at_zero_with_dense_input_convs():
    weights = theta0_weights(WIDTH16)
    sizes = {n: w.numel() for n, w in weights.items()}
    dens = {n: 0.5 for n in sizes}
    curve = cumulative_sparsity(dens, sizes, INPUT_CONVS)
    assert [n for n, _ in curve[:2]] == ["levels.0.skip.conv", "levels.0.down1.conv"]
    assert curve[0][1] == 0.0 and curve[1][1] == 0.0
    assert curve[-1][1] == pytest.approx(0.5 * (41456 - 128 - 4608) / 41456)  # below the mask's 50%
    assert cumulative_sparsity(dens, sizes)[0][1] == pytest.approx(0.5)


def test_error_spectrum_share_is_zero_for_a_perfect_reconstruction_and_high_for_fine_noise():
    x = np.linspace(0, 1, 64)
    truth = np.repeat(np.tile(0.5 + 0.3 * np.cos(2 * np.pi * 2 * x), (64, 1))[..., None], 3, axis=2)
    assert error_high_frequency(truth, truth) == (0.0, 0.0)
    checker = 0.05 * (np.indices((64, 64)).sum(axis=0) % 2 - 0.5)[..., None] * np.ones(3)  # zero mean
    share, rel = error_high_frequency(truth + checker, truth)
    assert share == pytest.approx(1.0, abs=1e-3) and rel > 0 and np.isfinite(rel)
    assert high_frequency_ratio(truth + checker) > high_frequency_ratio(truth)


def test_sr_cells_of_the_transfer_matrix_are_y_psnr():
    rows = []
    for src in ("denoise", "sr4"):
        for tgt in ("denoise", "sr4"):
            rows.append({"run_id": f"{src}-{tgt}", "level": 1, "sparsity": 0.2, "image": "Set5/baby", "task": tgt,
                         "source_task": src, "psnr_ema": 20.0 + (src == tgt),
                         "ypsnr_ema": 30.0 + (src == tgt) if tgt == "sr4" else np.nan})
    matrix, relative = transfer_matrix(pd.DataFrame(rows), "psnr_ema", 0.2)
    assert list(matrix.columns) == ["Set5/baby / denoise", "Set5/baby / sr4 (Y-PSNR)"]
    assert matrix.loc["Set5/baby / denoise", "Set5/baby / sr4 (Y-PSNR)"] == 30.0
    assert matrix.loc["Set5/baby / sr4", "Set5/baby / denoise"] == 20.0
    assert relative.loc["Set5/baby / denoise", "Set5/baby / sr4 (Y-PSNR)"] == pytest.approx(-1.0)



def test_masks_with_the_input_convs_kept_are_their_own_series():
    from lipsweep.analysis.curves import series_of

    rows = [{"method": "imp", "keep_input_convs": True}, {"method": "imp", "keep_input_convs": "False"},
            {"method": "imp", "imp_target": "clean", "keep_input_convs": "True"}, {"method": "snip"}]
    assert [series_of(pd.Series(r)) for r in rows] == ["imp (input convs kept)", "imp",
                                                       "imp (clean target) (input convs kept)", "snip"]


def test_the_input_convs_count_as_frozen_only_where_the_param_says_true():
    from lipsweep.analysis.layers import frozen_convs

    assert frozen_convs(pd.Series({"keep_input_convs": "False"})) == ()
    assert frozen_convs(pd.Series({"keep_input_convs": False})) == ()
    assert len(frozen_convs(pd.Series({"keep_input_convs": "True"}))) == 2
    assert len(frozen_convs(pd.Series({"keep_input_convs": True}))) == 2
