"""The fit-level pieces of issue 14: targets (Fig. 10), SSIM curves and output snapshots (Figs. 11-12),
SGLD-DIP's posterior mean (Fig. 16), grey images with a 1-channel net and image sets (Table 5)."""

import math

import numpy as np
import pytest
import torch

from lipsweep.cli.main import main
from lipsweep.core.errors import ConfigError
from lipsweep.experiments.spec import SpecError, load
from lipsweep.fitting.config import FitConfig, RunConfig, default_fit
from lipsweep.fitting.fit import fit, prepare, run
from lipsweep.kinds.base import TrialConfig
from lipsweep.priors import ModelConfig, build_model, conv_weights, counts
from lipsweep.priors.dip import dip_params
from lipsweep.problems import metrics
from lipsweep.problems.images import expand_images, load_image
from lipsweep.problems.tasks import DENOISE_SIGMA, make_problem, to_pixels

TINY = dict(size=64, width=4, iters=10)


def _run(**fields) -> tuple:
    cfg = TrialConfig(**{**TINY, **fields}).chain().run
    return run(cfg)


def test_ssim_on_the_device_equals_scikit_image_rgb_and_grey():
    g = torch.Generator().manual_seed(0)
    for c in (3, 1):
        a = torch.rand(1, c, 40, 56, generator=g)
        b = (a + 0.2 * torch.randn(a.shape, generator=g)).clamp(0, 1)
        assert metrics.ssim_torch(b, a) == pytest.approx(metrics.ssim(to_pixels(b), to_pixels(a)), abs=1e-9)


def test_targets_replace_the_image_before_the_task_and_are_what_metrics_compare_with():
    clean = load_image("Set5/baby", 64).pixels
    image = make_problem("fit", clean, 0, target="image")
    assert torch.equal(image.observation, image.clean) and torch.equal(image.clean[0].permute(1, 2, 0),
                                                                       torch.from_numpy(clean))
    perm = to_pixels(make_problem("fit", clean, 0, target="permuted").clean)
    assert np.array_equal(np.sort(perm.reshape(-1, 3), 0), np.sort(clean.reshape(-1, 3), 0))  # same pixels
    assert np.abs(perm - clean).mean() > 0.1  # in other places
    noise = to_pixels(make_problem("fit", clean, 0, target="noise").clean)
    assert noise.min() >= 0 and noise.max() <= 1 and abs(noise.mean() - 0.5) < 0.01 and abs(noise.std() - 0.2887) < 0.01
    noisy = to_pixels(make_problem("fit", clean, 0, target="noisy").clean)
    inside = (clean > 0.2) & (clean < 0.8)  # away from the clip
    assert (noisy - clean)[inside].std() == pytest.approx(DENOISE_SIGMA, rel=0.05)
    assert not np.array_equal(noise, to_pixels(make_problem("fit", clean, 1, target="noise").clean))  # per seed
    with pytest.raises(ConfigError, match=r"^target: unknown value 'scrambled'; allowed: image, noisy, permuted, noise$"):
        TrialConfig(target="scrambled")


def test_a_fit_keeps_outputs_at_chosen_iterations_and_ssim_in_its_curve():
    result, _ = _run(task="fit", snapshots=[3, 10])
    assert sorted(result.extra["outputs_at"]) == [3, 10]
    assert np.array_equal(result.extra["outputs_at"][10], result.final)  # no EMA: the last output itself
    last = result.curve[-1]
    assert last["iter"] == 10 and last["ssim"] == pytest.approx(result.metrics["ssim_final"], abs=1e-6)
    assert "psnr_observation" not in result.metrics  # fitting the target itself: nothing was degraded
    with pytest.raises(ConfigError, match=r"^snapshots: iteration 11 is beyond the fit's 10 iterations; allowed: 1\.\.10$"):
        TrialConfig(**TINY, snapshots=[5, 11]).chain()


def test_sgld_reconstruction_is_the_mean_of_the_outputs_sampled_after_the_burn_in():
    """Samples at 6, 8, 10 (burn-in 4, every 2): the posterior mean and std equal those of the outputs there."""
    result, _ = _run(task="fit", param_noise=2.0, burnin=4, sample_every=2, snapshots=[6, 8, 10])
    outs = np.stack([result.extra["outputs_at"][i] for i in (6, 8, 10)]).astype(np.float64)
    mean, std = result.extra["posterior"]
    assert np.allclose(mean, outs.mean(0), atol=1e-6) and np.allclose(std, outs.std(0), atol=1e-5)
    assert result.metrics["posterior_samples"] == 3 and np.array_equal(result.restored, mean)
    clean = result.extra["clean"]
    assert result.metrics["psnr_posterior"] == pytest.approx(metrics.psnr(mean, clean), abs=1e-9)
    assert result.metrics["posterior_std_max"] == pytest.approx(float(std.max()))
    with pytest.raises(ConfigError, match=r"^burnin: must be below the fit's 10 iterations, got 10"):
        default_fit("fit", iters=10, burnin=10)


def test_grey_images_fit_a_one_channel_net_and_sr_reports_their_luma_psnr():
    cfg = TrialConfig(**TINY, image="Set12/01", task="sr4", channels=1).chain().run
    prep = prepare(cfg)
    assert prep.problem.clean.shape[1] == 1 and prep.problem.observation.shape[1:] == (1, 16, 16)
    net = build_model(ModelConfig(width=4, out_channels=1), 0)
    assert net.head.weight.shape[0] == 1 and counts(net)["params"] == dip_params(ModelConfig(width=4, out_channels=1))
    result, _ = run(cfg, prep=prep)
    out, clean = result.final, result.extra["clean"]
    shaved = slice(metrics.SR_SHAVE, -metrics.SR_SHAVE)
    mse = np.mean((out[shaved, shaved, 0].astype(np.float64) - clean[shaved, shaved, 0]) ** 2)
    expected = 10 * math.log10(1 / mse) + 20 * math.log10(255 / 219)  # Y of a grey pixel: 16 + 219 g
    assert result.metrics["ypsnr_final"] == pytest.approx(expected, abs=1e-6)
    with pytest.raises(ConfigError, match=r"^channels: "):
        TrialConfig(channels=2)


def test_new_fields_at_their_defaults_keep_every_key_and_change_it_when_set():
    base = TrialConfig(**TINY)
    for change in ({"target": "noise"}, {"snapshots": [5]}, {"burnin": 3}, {"channels": 1}):
        other = TrialConfig(**TINY, **change)
        assert other.chain().dense_key != base.chain().dense_key and other.key != base.key, change
    assert FitConfig().snapshots == () and RunConfig().fit.burnin is None


def test_an_axis_can_name_a_whole_image_set_or_folder(tmp_path, image_file):
    assert expand_images("Set12/*") == [f"Set12/{i:02d}" for i in range(1, 13)]
    assert len(expand_images("inpainting_classic11/*")) == 11  # the BM3D set, barbara included
    trials = load("benchmarks", "paper").trials
    assert len(trials) == 11 + 12 + 5 + 11 + 12 + 5 + 5 + 14 + 14
    assert {t.channels for t in trials if t.image.startswith(("Set12", "inpainting"))} == {1}
    for name in ("a.png", "b.png"):
        image_file(64, 64, "L", name)
    assert [p.rsplit("/", 1)[1] for p in expand_images(str(tmp_path))] == ["a.png", "b.png"]
    empty = tmp_path / "empty"
    empty.mkdir()
    spec = tmp_path / "sets.yaml"
    spec.write_text(f"name: sets\ndescription: d\npaper: p\nkind: chain\nmetric: psnr_ema\nbase: {{}}\n"
                    f"axes:\n  cases: [{{image: '{empty}'}}]\nprofiles: {{paper: {{}}, local: {{}}, smoke: {{}}}}\n")
    with pytest.raises(SpecError, match=r"axes.cases\[0\].image: '.*empty' matches no image; allowed: a glob"):
        load(str(spec), "smoke")


def test_bad_inputs_are_one_line_before_any_trial(capsys, tmp_path):
    assert main(["run", "learning_curves", "--profile", "smoke", "--snapshots", "5,50"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "snapshots: iteration 50 is beyond the fit's 20 iterations" in err
    assert main(["run", "learning_targets", "--profile", "smoke", "--set", "target=scrambled"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "target: unknown value 'scrambled'" in err


def test_a_mask_that_empties_a_whole_conv_still_fits_with_pruned_weights_zero():
    """Behind an emptied conv BatchNorm sees a constant and its gradient overflows (1/sqrt(eps) per layer):
    before, NaN times a zero mask un-zeroed pruned weights and the fit died after ~50 steps."""
    cfg = TrialConfig(size=64, width=4, iters=50).chain().run
    prep = prepare(cfg)
    mask = {n: torch.ones_like(w, dtype=torch.bool) for n, w in conv_weights(prep.model).items()}
    mask["levels.0.down1.conv"][:] = False
    result = fit(prep.model, prep.z, prep.problem, cfg.fit, mask=mask)
    assert result.metrics["empty_layers"] == 1 and math.isfinite(result.metrics["psnr_final"])
    assert torch.count_nonzero(conv_weights(prep.model)["levels.0.down1.conv"]) == 0
