import json
from dataclasses import replace

import pytest
import torch
from conftest import tiny_run

from lipsweep.cli.main import main
from lipsweep.core.errors import ConfigError
from lipsweep.core.keys import content_key
from lipsweep.fitting.fit import apply_mask, fit
from lipsweep.lottery import chains
from lipsweep.lottery.chain import ChainConfig
from lipsweep.lottery.store import TrunkStore
from lipsweep.lottery.tickets import Tickets
from lipsweep.priors import conv_weights
from lipsweep.pruning.methods import level_counts
from lipsweep.stopping.rule import StopRule

VOLATILE = {"seconds"}


def chain_cfg(method="imp", rewind=0.0, image="Set5/baby", iters=40, **kw) -> ChainConfig:
    return ChainConfig(run=tiny_run("denoise", iters=iters, image=image), method=method, rewind=rewind, **kw)


def stable(rec) -> dict:
    return {k: v for k, v in rec.to_dict().items() if k not in VOLATILE}


@pytest.fixture
def tickets(tmp_path):
    return Tickets(TrunkStore(tmp_path / "store"))


def test_keys_are_pinned():
    """Changing what a key hashes orphans every stored trunk: this must fail loudly, not silently."""
    assert content_key({"b": 1, "a": [1, 2]}) == content_key({"a": [1, 2], "b": 1}) == "94a786c3662bc7be"
    cfg = chain_cfg()
    assert (cfg.dense_key, cfg.chain_key) == ("806340399fe21266", "115cbf13fa0a717f")  # schema 2
    # cosmetic fields do not change keys; determining fields do
    assert replace(cfg, run=replace(cfg.run, device="cuda")).dense_key == cfg.dense_key
    assert replace(cfg, run=replace(cfg.run, fit=replace(cfg.run.fit, curve_every=7))).dense_key == cfg.dense_key
    assert chain_cfg(rewind=0.1).dense_key == cfg.dense_key and chain_cfg(rewind=0.1).chain_key != cfg.chain_key
    assert chain_cfg(iters=41).dense_key != cfg.dense_key
    # equal-budget rewinding: N - j iterations per level; at rewind 0 both budgets are the same chain
    assert chain_cfg(rewind_budget="remaining").chain_key == cfg.chain_key
    late = chain_cfg(rewind=0.1, rewind_budget="remaining")
    assert late.level_iters == 36 and late.chain_key != chain_cfg(rewind=0.1).chain_key


def test_imp_chain_density_follows_0_8_per_level_exactly(tickets):
    result = tickets.chain(chain_cfg(), 3)
    total = result.records[0]["total"]
    assert [r["kept"] for r in result.records] == level_counts(total, 3)
    for r in result.records:
        assert abs(r["density"] - 0.8 ** r["level"]) < 1e-4
        assert r["sparsity"] == pytest.approx(1 - r["density"])
        assert {"imp_loss", "psnr_final", "psnr_ema", "psnr_peak", "ssim_final", "layer_densities"} <= set(r.to_dict())
    assert result.fits == 4


def test_second_request_does_zero_fits_and_extension_resumes(tickets):
    cfg = chain_cfg()
    first = tickets.chain(cfg, 2)
    again = tickets.chain(cfg, 2)
    assert again.fits == 0 and [stable(r) for r in again.records] == [stable(r) for r in first.records]
    longer = tickets.chain(cfg, 3)
    assert longer.fits == 1
    fresh = Tickets(TrunkStore(tickets.store.root))  # a new process sees the same store
    assert fresh.chain(cfg, 3).fits == 0


def test_resumed_chain_is_bit_identical_to_an_uninterrupted_one(tmp_path):
    cfg = chain_cfg()
    a = Tickets(TrunkStore(tmp_path / "a"))
    a.chain(cfg, 1)
    resumed = a.chain(cfg, 3).records
    straight = Tickets(TrunkStore(tmp_path / "b")).chain(cfg, 3).records
    assert [stable(r) for r in resumed] == [stable(r) for r in straight]


def test_rewind_ablation_shares_the_dense_level(tickets):
    levels = 2
    fits = [tickets.chain(chain_cfg(rewind=r), levels).fits for r in (0.0, 0.05, 0.1, 0.2)]
    assert fits == [1 + levels, levels, levels, levels]  # 1 + 4 x L, not 4 x (L + 1)
    assert tickets.chain(chain_cfg(rewind=0.15), 1).fits == 2  # a new rewind point replays the dense run to j


def test_remaining_budget_trains_n_minus_j_per_level(tickets):
    tickets.chain(chain_cfg(rewind=0.1, rewind_budget="remaining"), 2)
    iters = [e["iters"] for e in tickets.store.fit_log()]
    assert iters == [40, 36, 36]  # the dense run, then N - j for each pruned level


def test_rewind_restores_theta_j_for_kept_weights_biases_and_bn(tickets):
    cfg = chain_cfg(rewind=0.1)
    tickets.chain(cfg, 1)
    ctx = tickets.context(cfg)
    theta_j = chains.rewind_state(tickets, cfg, ctx)
    # the stored theta_j is the dense run's state after j = 4 of 40 iterations, replayed independently
    model = ctx.model(ctx.theta0)
    replay = fit(model, ctx.inputs[0], ctx.problems[0], replace(cfg.run.fit, iters=4), seed=cfg.run.seed,
                 snapshot_at=(4,)).extra["snapshots"][4]
    assert cfg.rewind_iter == 4
    assert all(torch.equal(theta_j[k], replay[k]) for k in replay)
    rewound = ctx.model(theta_j)
    mask = tickets.mask(cfg, 1)
    apply_mask(rewound, mask.masks)
    state = rewound.state_dict()
    weights = {f"{n}.weight" for n in mask.masks}
    for k, v in state.items():
        if k in weights:
            m = mask.masks[k.removesuffix(".weight")]
            assert torch.equal(v[m], theta_j[k][m]) and torch.count_nonzero(v[~m]) == 0
        else:  # biases, BN affine and buffers come back exactly
            assert torch.equal(v, theta_j[k]), k


def test_shared_rewind_gives_every_seed_seed_0s_theta_j(tickets):
    """``rewind_source: shared`` (the reference's one rewind file): seed 1's levels restart from seed 0's
    theta_j, its masks still come from its own dense run; seed 0 (and rewind 0) are the own chain."""
    own0, own1 = chain_cfg(rewind=0.1), replace(chain_cfg(rewind=0.1), run=replace(chain_cfg().run, seed=1))
    shared1 = replace(own1, rewind_source="shared")
    assert replace(own0, rewind_source="shared").chain_key == own0.chain_key
    assert replace(own1, rewind=0.0, rewind_source="shared").chain_key == replace(own1, rewind=0.0).chain_key
    assert shared1.chain_key != own1.chain_key and shared1.dense_key == own1.dense_key
    records = tickets.chain(shared1, 1).records
    theta0_j = chains.rewind_state(tickets, own0, tickets.context(own0))
    theta1_j = chains.rewind_state(tickets, own1, tickets.context(own1))
    got = chains.rewind_state(tickets, shared1, tickets.context(shared1))
    assert all(torch.equal(got[k], theta0_j[k]) for k in theta0_j)
    assert any(not torch.equal(theta1_j[k], theta0_j[k]) for k in theta0_j)
    assert [e["dense"] for e in tickets.store.fit_log()][:2] == [own1.dense_key, own0.dense_key]
    assert tickets.mask(shared1, 1).hash == tickets.mask(own1, 1).hash  # the mask is seed 1's own
    assert records[1].sparsity == pytest.approx(0.2, abs=1e-3)
    with pytest.raises(ConfigError, match="rewind_source"):
        replace(own1, rewind_source="other")


def test_other_methods_match_imp_counts_and_random_profile_copies_the_lip(tickets):
    levels = 2
    imp = tickets.chain(chain_cfg(), levels).records
    for method in ("random", "snip", "synflow", "random_profile"):
        recs = tickets.chain(chain_cfg(method=method, synflow_rounds=10), levels).records
        for a, b in zip(imp, recs):
            slack = len(a["layer_densities"]) if method == "random" else 0
            assert abs(a["kept"] - b["kept"]) <= slack, method
    lip = tickets.mask(chain_cfg(), 2)
    rp = tickets.mask(chain_cfg(method="random_profile"), 2)
    assert rp.layer_counts() == lip.layer_counts() and rp.hash != lip.hash


def test_transfer_looks_the_mask_up_and_never_refinds_it(tickets):
    source = chain_cfg(image="Set5/baby")
    tickets.chain(source, 2)
    mask = tickets.mask(source, 2)
    before = tickets.fits
    rec = tickets.evaluate(mask, chain_cfg(image="Set5/bird"))
    assert tickets.fits == before + 1  # one evaluation fit; no chain re-found
    assert rec["mask_hash"] == mask.hash and rec["source"]["image"] == "Set5/baby"
    assert rec["kept"] == level_counts(rec["total"], 2)[2]
    assert tickets.evaluate(mask, chain_cfg(image="Set5/bird")) == rec and tickets.fits == before + 1


def test_stop_rule_halts_or_records_and_continues(tickets, monkeypatch):
    cfg = chain_cfg()
    full = tickets.chain(cfg, 4)
    losses = [r["imp_loss"] for r in full.records]
    rule = StopRule(k=1)
    fired = rule.fired_at(losses)
    assert fired is not None, losses  # at this scale the IMP loss rises at some level
    halted = tickets.chain(cfg, 4, stop=rule)
    assert len(halted.records) == fired + 1 and halted.stop_fired_at == fired
    assert halted.stop_chosen == rule.chosen(losses)
    going = tickets.chain(cfg, 4, stop=rule, keep_going=True)
    assert len(going.records) == 5 and going.stop_fired_at == fired


def test_multi_image_imp_reports_every_image(tickets):
    cfg = chain_cfg(multi_images=("Set5/bird", "Set5/head"))
    result = tickets.chain(cfg, 1)
    for rec in result.records:
        assert [p["image"] for p in rec["per_image"]] == ["Set5/baby", "Set5/bird", "Set5/head"]
        assert rec["psnr_final"] == pytest.approx(sum(p["psnr_final"] for p in rec["per_image"]) / 3)
    assert len(tickets.context(cfg).inputs) == 1  # shared z, as the paper states
    own = chain_cfg(multi_images=("Set5/bird",), shared_z=False)
    ctx = tickets.context(own)
    assert len(ctx.inputs) == 2 and not torch.equal(ctx.inputs[0], ctx.inputs[1])
    assert own.dense_key != chain_cfg(multi_images=("Set5/bird",)).dense_key


def test_multi_image_imp_with_images_of_different_sizes_needs_per_image_z(tickets):
    """Fig. 4's cross-domain set mixes sizes (woman is 64 wide, 96 high at size 64): one network, one z per image."""
    mixed = chain_cfg(multi_images=("Set5/woman",), shared_z=False)
    ctx = tickets.context(mixed)
    assert [tuple(z.shape[2:]) for z in ctx.inputs] == [(64, 64), (96, 64)]
    rec = tickets.chain(mixed, 1).records[-1]
    assert [p["image"] for p in rec["per_image"]] == ["Set5/baby", "Set5/woman"] and rec["sparsity"] > 0.19
    with pytest.raises(ConfigError, match=r"^shared_z: images of different sizes \[\(64, 64\), \(96, 64\)\]"):
        tickets.context(chain_cfg(multi_images=("Set5/woman",)))
    assert chain_cfg(shared_z=False).dense_key == chain_cfg().dense_key  # one image: z is its own either way


def test_clean_target_fits_the_clean_image_and_reports_the_observation_fit(tickets):
    cfg = chain_cfg(imp_target="clean")
    result = tickets.chain(cfg, 1)
    assert result.fits == 4  # an IMP fit and an evaluation fit per level
    ctx = tickets.context(cfg)
    assert torch.equal(ctx.targets[0].observation, ctx.problems[0].clean)
    assert cfg.dense_key != chain_cfg().dense_key
    for rec in result.records:  # the clean fit's own PSNR is kept beside the reported denoising one
        fitted, shown = rec.metrics["clean_fit_psnr_ema_peak"], rec.metrics["psnr_ema_peak"]
        assert 5 < fitted < 60 and fitted != shown and rec.metrics["clean_fit_psnr_ema"] <= fitted
    assert "clean_fit_psnr_ema" not in tickets.chain(chain_cfg(), 1).records[1].metrics


def test_keep_input_convs_leaves_them_dense(tickets):
    cfg = chain_cfg(keep_input_convs=True)
    tickets.chain(cfg, 2)
    mask = tickets.mask(cfg, 2)
    assert mask.masks["levels.0.skip.conv"].all() and mask.masks["levels.0.down1.conv"].all()
    frozen = mask.masks["levels.0.skip.conv"].numel() + mask.masks["levels.0.down1.conv"].numel()
    assert frozen == 32 * 4 + 32 * 16 * 9
    assert mask.kept - frozen == level_counts(mask.total - frozen, 2)[2]


def test_masked_weights_stay_zero_under_sgld_noise(tickets):
    cfg = replace(chain_cfg(), run=replace(chain_cfg().run, fit=replace(chain_cfg().run.fit, param_noise=2.0)))
    mask = tickets.mask(chain_cfg(method="random"), 3)
    ctx = tickets.context(cfg)
    model = ctx.model(ctx.theta0)
    before = {n: w.detach().clone() for n, w in conv_weights(model).items()}
    fit(model, ctx.inputs[0], ctx.problems[0], cfg.run.fit, mask=mask.masks)
    for n, w in conv_weights(model).items():
        m = mask.masks[n]
        assert torch.count_nonzero(w[~m]) == 0
    assert any(not torch.equal(w, before[n]) for n, w in conv_weights(model).items())


def test_bad_chain_configs_name_the_field():
    for kwargs, field in [({"method": "grasp"}, "method"), ({"rewind": 1.5}, "rewind"),
                          ({"imp_target": "noisy"}, "imp_target"), ({"prune_fraction": 0.0}, "prune_fraction")]:
        with pytest.raises(ConfigError) as err:
            chain_cfg(**kwargs)
        assert err.value.field == field


def test_ticket_cli_writes_levels_and_masks_and_mask_show_reads_them(tmp_path, capsys):
    args = ["ticket", "--image", "Set5/baby", "--task", "denoise", "--size", "64", "--width", "8", "--iters", "20",
            "--levels", "2", "--store", str(tmp_path / "s"), "--out", str(tmp_path / "o")]
    assert main(args) == 0
    data = json.loads((tmp_path / "o" / "levels.json").read_text())
    assert [r["level"] for r in data["levels"]] == [0, 1, 2] and data["fits"] == 3
    assert (tmp_path / "o" / "masks" / "level_2.npz").is_file()
    capsys.readouterr()
    assert main(args) == 0
    assert json.loads((tmp_path / "o" / "levels.json").read_text())["fits"] == 0
    capsys.readouterr()
    assert main(["mask", "show", str(tmp_path / "o" / "masks" / "level_2"), "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["kept"] == data["levels"][2]["kept"] and shown["meta"]["method"] == "imp"
    assert main(["mask", "show", f"{data['chain_key']}/2", "--store", str(tmp_path / "s")]) == 0
    assert "sparsity 36.00%" in capsys.readouterr().out
    assert main(["mask", "show", str(tmp_path / "nope")]) == 2
    assert "mask: no mask at" in capsys.readouterr().err


def test_a_target_sparsity_grid_is_hit_exactly_by_imp_and_one_shot_methods(tickets):
    grid = (0.2, 0.4, 0.5)
    imp = tickets.chain(chain_cfg(sparsities=grid), 3).records
    total = imp[0].total
    assert [r.kept for r in imp] == [total] + [round(total * (1 - s)) for s in grid]
    snip = tickets.chain(chain_cfg(method="snip", sparsities=grid), 3).records
    assert [r.kept for r in snip] == [r.kept for r in imp]
    assert chain_cfg(sparsities=grid).chain_key != chain_cfg().chain_key
    with pytest.raises(ConfigError) as err:
        chain_cfg(sparsities=(0.4, 0.2))
    assert err.value.field == "sparsities"
