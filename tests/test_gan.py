"""Generator lottery tickets (paper Section 5) through the trunk store: generator IMP and random pruning at
the same counts, latent-optimisation evaluations, keys that know the checkpoint, and bad input. A tiny
random generator (16 px) keeps every fit well under a second."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import gan_files

from lipsweep.cli.main import main
from lipsweep.core.errors import ConfigError
from lipsweep.kinds.base import TrialConfig, run_trial
from lipsweep.kinds.gan.config import gan_eval
from lipsweep.kinds.gan.kind import evaluate_level, loaded_generator, masked_generator, ticket_mask
from lipsweep.lottery.store import TrunkStore
from lipsweep.lottery.tickets import Tickets
from lipsweep.priors.pggan import (
    Discriminator,
    Generator,
    GeneratorSpec,
    masked_weights,
    save_checkpoint,
)
from lipsweep.pruning.methods import level_counts

SPEC = GeneratorSpec(latent=8, depths=(16, 8, 8), out_channels=1)  # 16 px, grey


def write_generator(path, seed=0, meta=None):
    torch.manual_seed(seed)
    save_checkpoint(str(path), SPEC, Generator(SPEC), Discriminator(SPEC), meta or {"note": "test"})
    return path


@pytest.fixture
def setup(tmp_path):
    gen, data = gan_files(tmp_path)
    base = dict(kind="gan", model="pggan", generator=str(gen), data=str(data), image=str(data / "f0.png"),
                task="cs", measurements=64, outliers=2, iters=30, restarts=2, tune_epochs=2, tune_fraction=0.5,
                levels=3)
    return tmp_path, base


def trial(base, **kw):
    return TrialConfig(**{**base, **kw})


def test_generator_imp_prunes_20_percent_per_level_and_random_keeps_the_same_counts(setup):
    tmp, base = setup
    tk = Tickets(TrunkStore(tmp / "store"))
    imp, rnd = gan_eval(trial(base)).ticket, gan_eval(trial(base, method="random")).ticket
    masks = {m: [ticket_mask(tk, t, lvl) for lvl in range(4)] for m, t in (("imp", imp), ("random", rnd))}
    total = masks["imp"][0].total
    assert total == sum(w.numel() for w in masked_weights(Generator(SPEC)).values())
    for method, chain in masks.items():
        assert [m.kept for m in chain] == level_counts(total, 3)  # exactly, both methods
        for prev, nxt in zip(chain, chain[1:]):
            assert all(not bool((n & ~p).any()) for p, n in zip(prev.masks.values(), nxt.masks.values()))  # nested
    assert masks["imp"][3].hash != masks["random"][3].hash
    assert tk.fits == 3  # three fine-tunings (random needs none)
    again = Tickets(TrunkStore(tmp / "store"))
    assert [ticket_mask(again, imp, lvl).hash for lvl in range(4)] == [m.hash for m in masks["imp"]]
    assert again.fits == 0  # no level fine-tuned twice


def test_a_trial_yields_every_level_once_and_the_dense_fit_is_shared_by_both_methods(setup):
    tmp, base = setup
    tk = Tickets(TrunkStore(tmp / "store"))
    recs = list(run_trial(trial(base), tk))
    assert [r.level for r in recs] == [0, 1, 2, 3] and [r.method for r in recs] == ["dense", "imp", "imp", "imp"]
    assert [round(r.sparsity, 3) for r in recs] == [0.0, 0.2, 0.36, 0.488]
    for r in recs:
        assert {"mse", "psnr", "ssim", "loss", "mse_oracle"} <= set(r.metrics)
        assert r.metrics["mse_oracle"] <= r.metrics["mse"] + 1e-9
        assert r.imp_loss == r.metrics["loss"]
    fits = tk.fits
    assert fits == 3 + 4  # 3 fine-tunings, 4 latent fits
    rnd = list(run_trial(trial(base, method="random"), tk))
    assert tk.fits == fits + 3  # the dense level is the imp trial's: only levels 1-3 are fitted
    assert rnd[0].to_dict() == {**recs[0].to_dict()}
    again = Tickets(TrunkStore(tmp / "store"))
    assert [r.to_dict() for r in run_trial(trial(base), again)] == [r.to_dict() for r in recs] and again.fits == 0


def test_the_evaluated_generator_has_its_pruned_weights_exactly_zero_and_the_pretrained_rest(setup):
    tmp, base = setup
    tk = Tickets(TrunkStore(tmp / "store"))
    ev = gan_eval(trial(base))
    mask = ticket_mask(tk, ev.ticket, 2)
    g = masked_generator(tk, ev, mask)
    pretrained = masked_weights(loaded_generator(tk, ev.ticket.generator.path).generator)
    for name, w in masked_weights(g).items():
        m = mask.masks[name]
        assert torch.count_nonzero(w[~m]) == 0
        assert torch.equal(w[m], pretrained[name][m])
    rec = evaluate_level(tk, ev, 2)
    assert rec.kept == mask.kept and rec.mask_hash == mask.hash


def test_every_key_knows_the_checkpoint_content(setup):
    tmp, base = setup
    t1 = trial(base)
    ticket1, random1 = gan_eval(t1).ticket.key, gan_eval(trial(base, method="random")).ticket.key
    write_generator(tmp / "g.pt", seed=1)  # same path, other weights
    t2 = trial(base)
    assert t1.key != t2.key
    assert ticket1 != gan_eval(t2).ticket.key
    assert random1 != gan_eval(trial(base, method="random")).ticket.key


@pytest.mark.platform
def test_latent_fits_of_the_shipped_generator_restore_a_held_out_face(tmp_path):
    """faces32 on a face it never saw: the fit lowers the measurement loss and the error to the truth, and
    centre inpainting beats its observation."""
    tk = Tickets(TrunkStore(tmp_path / "store"))
    base = dict(kind="gan", model="pggan", image="lfw_faces/face_080", measurements=200, outliers=4, iters=150,
                levels=0)
    for task in ("cs", "inpaint_centre"):
        rec = list(run_trial(TrialConfig(**base, task=task), tk))[0]
        curve = json.loads((tmp_path / "store" / rec.where / "curve.json").read_text())[0]
        assert curve[0]["iteration"] == 0 and curve[-1]["iteration"] == 150
        assert curve[-1]["loss"] < 0.5 * curve[0]["loss"], task
        assert rec.metrics["mse"] < 0.5 * curve[0]["mse"], task
        if task == "inpaint_centre":
            assert rec.metrics["mse"] < rec.metrics["mse_observation"]
        else:
            assert "mse_observation" not in rec.metrics  # a CS observation is no image


@pytest.mark.parametrize("change, field", [
    ({"generator": "nope.pt"}, "generator"),
    ({"latent": 512}, "latent"),
    ({"size": 64}, "size"),
    ({"measurements": 10_000}, "measurements"),
    ({"outliers": 64}, "outliers"),
    ({"objective": "l1"}, "objective"),
    ({"model": "dip"}, "model"),
    ({"method": "snip"}, "method"),
    ({"rewind": 0.1}, "rewind"),
    ({"ema": 0.9}, "ema"),
])
def test_bad_gan_input_names_its_field(setup, change, field):
    _, base = setup
    with pytest.raises(ConfigError) as err:
        trial(base, **change)
    assert err.value.field == field


def test_files_that_are_not_generators_and_empty_folders_are_refused(setup):
    tmp, base = setup
    (tmp / "text.pt").write_text("not a checkpoint")
    torch.save({"conv.weight": torch.zeros(3)}, tmp / "state.pt")
    for bad in ("text.pt", "state.pt"):
        with pytest.raises(ConfigError) as err:
            trial(base, generator=str(tmp / bad))
        assert err.value.field == "generator"
    (tmp / "empty").mkdir()
    with pytest.raises(ConfigError) as err:
        trial(base, data=str(tmp / "empty"))
    assert err.value.field == "data"
    (tmp / "faces" / "broken.png").write_bytes(b"not a png")
    with pytest.raises(ConfigError) as err:
        trial(base)
    assert err.value.field == "data" and "broken.png" in err.value.message


def test_the_cli_refuses_a_file_that_is_not_a_generator_in_one_line_before_ray(tmp_path, capsys):
    (tmp_path / "g.pt").write_text("not a checkpoint")
    code = main(["run", "gan_lip", "--profile", "smoke", "--generator", str(tmp_path / "g.pt"),
                 "--storage", str(tmp_path / "tune"), "--tracking-uri", f"sqlite:///{tmp_path / 'm.db'}"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "generator" in err[0] and "pytorch_GAN_zoo" in err[0]
    assert not (tmp_path / "tune").exists() and not (tmp_path / "m.db").exists()


def test_gan_fields_on_a_dip_chain_and_the_generator_prior_in_a_chain_are_refused():
    with pytest.raises(ConfigError) as err:
        TrialConfig(measurements=10)
    assert err.value.field == "measurements"
    with pytest.raises(ConfigError) as err:
        TrialConfig(model="pggan")
    assert err.value.field == "model" and "kind 'gan'" in err.value.message


def test_the_paper_profile_is_priced_without_weights_and_refused_to_run_without_them(capsys, tmp_path):
    assert main(["show", "gan_lip", "--profile", "paper", "--store", str(tmp_path / "s")]) == 0
    out = capsys.readouterr().out
    assert "GPU hours" in out and "120 trials" in out
    code = main(["run", "gan_lip", "--profile", "paper", "--store", str(tmp_path / "s"),
                 "--tracking-uri", f"sqlite:///{tmp_path / 'm.db'}", "--storage", str(tmp_path / "tune")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "generator" in err[0] and "--generator PATH" in err[0]
    assert not (tmp_path / "tune").exists()


def test_the_smoke_sweep_runs_through_tune_into_mlflow_with_table_1_and_fig_8(ray_local, tmp_path):
    from lipsweep.analysis.report import analyze
    from mlflow.tracking import MlflowClient

    from lipsweep.experiments.spec import load
    from lipsweep.sweep.options import SweepOptions
    from lipsweep.sweep.tune import run_sweep

    exp = load("gan_lip", "smoke")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    opts = SweepOptions(store=str(tmp_path / "store"), storage=str(tmp_path / "tune"), tracking_uri=uri, quiet=True)
    summary = run_sweep(exp, opts)
    assert sorted(summary.finished) == sorted(t.key for t in exp.trials) and len(exp.trials) == 2
    client = MlflowClient(uri)
    found = client.search_runs([client.get_experiment_by_name("lipsweep/gan_lip").experiment_id])
    children = [r for r in found if r.data.tags.get("lipsweep.role") == "trial"]
    assert sorted(r.data.params["method"] for r in children) == ["imp", "random"]
    for r in children:
        assert [m.step for m in sorted(client.get_metric_history(r.info.run_id, "mse"), key=lambda m: m.step)] == [0, 1]
        names = {a.path for a in client.list_artifacts(r.info.run_id, "level_01")}
        assert {"level_01/restored.png", "level_01/clean.png", "level_01/mask.npz"} <= names
    fits = [e for e in TrunkStore(opts.store).fit_log()]
    # gan_eval finetuned: one fine-tuning (the dense one, shared by both methods), the shared dense fit, one
    # level-1 fit per method
    assert len(fits) == 1 + 1 + 2 and {e.get("recipe") for e in fits if e["target"] == "fine-tune"} == {"reference"}
    assert not run_sweep(exp, opts).failed and len(TrunkStore(opts.store).fit_log()) == len(fits)
    from lipsweep.experiments.plan import plan
    assert sum(p.fits_needed for p in plan(exp, TrunkStore(opts.store))) == 0  # `show` knows it is all stored
    # levels 2: each method fine-tuned under its level-1 mask (random too), and its level-2 fit
    assert sum(p.fits_needed for p in plan(load("gan_lip", "smoke", {"levels": 2}), TrunkStore(opts.store))) == 4
    rep = analyze("gan_lip", uri, tmp_path / "report", "smoke", metric="mse", log_to_mlflow=False)
    table = (tmp_path / "report" / "table.md").read_text()
    assert "imp" in table and "random" in table and "20.0%" in table
    assert (tmp_path / "report" / "reconstructions.png").is_file() and rep.files


def test_cs_at_256_px_never_holds_its_0_8_gb_matrix():
    """m = 1000 rows of a 256 x 256 x 3 image: A is 786 MB in float32; the blocked operator regenerates it
    in 16 MiB blocks, so building the problem and one product with its backward stay far below that."""
    import subprocess
    import sys

    code = ("import resource, torch, numpy as np; torch.set_num_threads(1); from lipsweep.problems.tasks import make_cs_problem;"
            "base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss;"
            "p = make_cs_problem(np.random.default_rng(0).random((256, 256, 3)).astype(np.float32), 0);"
            "x = torch.rand(1, 3, 256, 256, requires_grad=True);"
            "((p.operator(x) - p.observation) ** 2).mean().backward();"
            "print(type(p.operator).__name__, (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) // 1024)")
    name, extra_mib = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                     check=True).stdout.split()
    assert name == "BlockedGaussian" and int(extra_mib) < 150  # measured 38 MiB (0.9 GB before the buffer)
