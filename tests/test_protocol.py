"""The protocol bugs that silently changed results: shared noise across images, a backtrack that lost the
rewind state or reported the spike as the IMP loss, and keys that named files instead of their content."""

from __future__ import annotations

import shutil
from dataclasses import replace

import numpy as np
import pytest
import torch
from conftest import tiny_run
from PIL import Image

from lipsweep.core.keys import SCHEMA
from lipsweep.fitting import fit as fitmod
from lipsweep.fitting.fit import fit, prepare
from lipsweep.lottery.chain import ChainConfig
from lipsweep.lottery.store import TrunkStore
from lipsweep.lottery.tickets import Tickets
from lipsweep.problems.images import load_image, resolve
from lipsweep.problems.tasks import make_problem


def _corr(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(np.corrcoef(a.flatten().numpy(), b.flatten().numpy())[0, 1])


def test_two_images_of_one_size_get_independent_noise_and_masks():
    baby, bird = (load_image(n, 64).pixels for n in ("Set5/baby", "Set5/bird"))
    assert baby.shape == bird.shape
    mid = np.full_like(baby, 0.5)  # no clipping: the noise itself
    a, b = make_problem("denoise", mid, 0), make_problem("denoise", mid + 1e-3, 0)
    assert abs(_corr(a.observation - a.clean, b.observation - b.clean)) < 0.05
    ma, mb = make_problem("inpaint", baby, 0).operator.mask, make_problem("inpaint", bird, 0).operator.mask
    assert abs(_corr(ma, mb)) < 0.05 and 0.45 < float(ma.mean()) < 0.55
    same = make_problem("denoise", baby, 0).observation  # same content, task and seed: the same draw
    assert torch.equal(same, make_problem("denoise", baby.copy(), 0).observation)


def test_multi_image_chain_fits_independent_observations(tmp_path):
    cfg = ChainConfig(run=tiny_run(iters=20, width=8), multi_images=("Set5/bird",))
    trunk = Tickets(TrunkStore(tmp_path)).context(cfg)
    noise = [p.observation - p.clean for p in trunk.problems]
    assert abs(_corr(noise[0], noise[1])) < 0.1  # clipping at 0/1 leaves a little shared structure


def _forced_backtrack(monkeypatch, at: set[int]) -> dict[int, list[torch.Tensor]]:
    """Reject exactly the steps in ``at``: each restores the parameters saved at the last check, which are
    returned by step for comparison."""
    restored: dict[int, list[torch.Tensor]] = {}
    original = fitmod.Backtrack.rejects

    def rejects(self, it, loss):
        if it not in at:
            return original(self, it, loss)
        with torch.no_grad():
            for p, keep in zip(self.params, self.saved):
                p.copy_(keep)
        self.count += 1
        restored[it] = [p.detach().clone() for p in self.params]
        return True

    monkeypatch.setattr(fitmod.Backtrack, "rejects", rejects)
    return restored


def test_a_backtrack_on_a_rewind_iteration_keeps_the_restored_state(monkeypatch):
    run = tiny_run(iters=40, width=8, backtrack=True, backtrack_every=10)
    prep = prepare(run)
    restored = _forced_backtrack(monkeypatch, {20})
    result = fit(prep.model, prep.z, prep.problem, run.fit, snapshot_at=(20,))
    assert list(restored) == [20] and result.metrics["backtracks"] == 1
    snap = result.extra["snapshots"][20]  # the rewind state exists, and it is the restored one
    for (name, _), value in zip(prep.model.named_parameters(), restored[20]):
        assert torch.equal(snap[name], value), name


def test_a_backtrack_on_the_last_step_reports_the_accepted_loss(monkeypatch):
    run = tiny_run(iters=30, width=8, backtrack=True, backtrack_every=10)
    prep = prepare(run)
    restored = _forced_backtrack(monkeypatch, {30})
    losses = []
    original = fitmod._forward_backward

    def record(*args):
        outs, loss = original(*args)
        losses.append(loss)
        return outs, loss

    monkeypatch.setattr(fitmod, "_forward_backward", record)
    result = fit(prep.model, prep.z, prep.problem, run.fit)
    assert result.metrics["loss_final"] == losses[19] != losses[29]  # the state it ends in, not the spike
    for p, kept in zip(prep.model.parameters(), restored[30]):  # and it ends in the last accepted weights
        assert torch.equal(p, kept)


def test_an_edited_image_file_gets_new_keys_and_a_new_observation(tmp_path):
    path = tmp_path / "img.png"
    shutil.copy(resolve("Set5/baby"), path)
    cfg = ChainConfig(run=replace(tiny_run(iters=20, width=8), problem=replace(tiny_run().problem, image=str(path))))
    before = cfg.dense_key
    pixels = np.asarray(Image.open(path).convert("RGB")).copy()
    pixels[:8, :8] = 0
    Image.fromarray(pixels).save(path)
    assert cfg.dense_key == before  # a config keeps the key it was first given (as a trial does)
    again = replace(cfg)  # the same config made again reads the edited file
    assert again.dense_key != before and again.dense_payload()["schema"] == SCHEMA


def test_a_store_of_the_old_schema_is_noted_and_never_read(tmp_path, capsys):
    (tmp_path / "dense" / "66cc07facf664c9e").mkdir(parents=True)  # schema 1 wrote no SCHEMA file
    Tickets(TrunkStore(tmp_path))
    assert "holds results of key schema 1" in capsys.readouterr().err
    assert (tmp_path / "SCHEMA").read_text().strip() == str(SCHEMA)
    Tickets(TrunkStore(tmp_path))
    assert capsys.readouterr().err == ""


def test_the_papers_metric_is_the_best_ema_psnr_over_iterations():
    from lipsweep.fitting.fit import run

    den, _ = run(tiny_run("denoise", iters=60, width=8))
    m = den.metrics
    best_curve = max(p["psnr_ema"] for p in den.curve)  # sampled every curve_every steps
    assert m["psnr_ema_peak"] >= max(m["psnr_ema"], best_curve - 1e-4) and 1 <= m["ema_peak_iter"] <= 60
    assert m["psnr_ema_peak"] != m["psnr_peak"]  # a different output than the raw peak
    inp, _ = run(tiny_run("inpaint", iters=40, width=8))  # no EMA: the EMA output is the output
    assert inp.metrics["psnr_ema_peak"] == inp.metrics["psnr_peak"]
    assert inp.metrics["ema_peak_iter"] == inp.metrics["peak_iter"]
    sr, _ = run(tiny_run("sr4", iters=40, width=8))  # best Y-PSNR over iterations, not Y at the RGB peak
    assert sr.metrics["ypsnr_ema_peak"] >= max(sr.metrics["ypsnr_peak"], sr.metrics["ypsnr_final"]) - 1e-3


def test_the_next_levels_mask_prunes_the_trained_weights_of_this_level(tmp_path):
    """Algorithm 1: level L + 1's mask is the magnitude step of level L's *trained* weights."""
    from lipsweep.pruning.methods import magnitude_step

    tickets = Tickets(TrunkStore(tmp_path))
    cfg = ChainConfig(run=tiny_run(iters=30, width=8))
    tickets.chain(cfg, 2)
    trunk = tickets.context(cfg)
    level1 = tickets.mask(cfg, 1)
    _, trained = tickets.fit(trunk, trunk.theta0, level1)  # the level-1 fit again (it is deterministic)
    expected = magnitude_step(trained, level1, cfg.prune_fraction)
    untrained = magnitude_step(trunk.model(trunk.theta0), level1, cfg.prune_fraction)
    stored = tickets.mask(cfg, 2).masks
    assert all(torch.equal(stored[n], expected[n]) for n in stored)
    assert not all(torch.equal(stored[n], untrained[n]) for n in stored)


def test_imp_beats_random_by_a_db_at_high_sparsity_on_a_width_scaled_net(tmp_path):
    """docs/science.md section 1b: at 64 px the DIP needs width ~ size / 4 for pruning to matter; there IMP's ticket at
    87.5% sparsity (3 levels of 50%) keeps its quality and random pruning loses it."""
    tickets = Tickets(TrunkStore(tmp_path))
    base = ChainConfig(run=tiny_run(iters=300, width=16), prune_fraction=0.5)
    imp = tickets.chain(base, 3).records
    rnd = tickets.chain(replace(base, method="random"), 3).records
    assert imp[3].sparsity == pytest.approx(0.875, abs=1e-3) and rnd[3].kept <= imp[3].kept + 26
    assert imp[3].metrics["psnr_ema"] >= rnd[3].metrics["psnr_ema"] + 1.0, (imp[3].metrics, rnd[3].metrics)
