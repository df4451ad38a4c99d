"""Classification transfer (paper Fig. 6, Fig. 7c/f): the DIP classifier at theta_0, the classification ticket
through the trunk store, masks crossing between denoising and classification, the data sets and bad input.
Tiny scale: width 4, 64 px, 16 LFW images per split, one epoch."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from lipsweep.cli.main import main
from lipsweep.core.errors import ConfigError
from lipsweep.experiments.spec import PROFILES, load
from lipsweep.kinds.base import TrialConfig, run_trial
from lipsweep.kinds.classify import data as classify_data
from lipsweep.kinds.classify.kind import evaluate, ticket_mask
from lipsweep.kinds.classify.masks import HEAD, dense_mask
from lipsweep.kinds.classify.model import build_classifier
from lipsweep.lottery.store import TrunkStore
from lipsweep.lottery.tickets import Tickets
from lipsweep.priors import ModelConfig, build_model, conv_weights
from lipsweep.pruning.masks import MaskSet
from lipsweep.pruning.methods import keep_top, level_counts

BASE = dict(kind="classify", data="lfw_faces", size=64, width=4, epochs=1, examples=16, levels=2, iters=10)


def trial(**kw) -> TrialConfig:
    return TrialConfig(**{**BASE, **kw})


def test_the_classifier_is_the_dips_hourglass_at_theta0_with_a_seeded_linear_head():
    cfg = ModelConfig(width=4)
    clf, dip = build_classifier(cfg, 3, seed=1), build_model(cfg, 1)
    convs, dip_convs = conv_weights(clf), conv_weights(dip)
    assert list(convs) == [n for n in dip_convs if n != HEAD] and len(convs) == 25  # 5 levels x 5 convs
    assert all(torch.equal(convs[n], dip_convs[n]) for n in convs)  # theta_0, value for value
    x = torch.rand(2, 3, 64, 64)
    clf.eval(), dip.eval()
    padded = torch.cat([x, torch.zeros(2, 29, 64, 64)], dim=1)
    assert torch.equal(clf.features(x), dip._level(padded, 0).mean(dim=(2, 3)))
    assert clf(x).shape == (2, 3) and torch.equal(build_classifier(cfg, 3, 1).fc.weight, clf.fc.weight)
    assert not torch.equal(build_classifier(cfg, 3, 2).fc.weight, clf.fc.weight)
    before = clf(x)
    with torch.no_grad():  # the input slices past the image's 3 channels see zeros: they change nothing
        convs["levels.0.down1.conv"][:, 3:] = 7.0
        convs["levels.0.skip.conv"][:, 3:] = 7.0
    assert torch.equal(clf(x), before)


def test_a_classification_ticket_prunes_exact_counts_keeps_pruned_weights_zero_and_reruns_nothing(tmp_path):
    tk = Tickets(TrunkStore(tmp_path))
    recs = list(run_trial(trial(), tk))
    total = sum(w.numel() for n, w in conv_weights(build_model(ModelConfig(width=4), 0)).items() if n != HEAD)
    assert [r.level for r in recs] == [0, 1, 2] and [r.method for r in recs] == ["dense", "imp", "imp"]
    assert [r.kept for r in recs] == level_counts(total, 2) and recs[0].total == total == 4160
    for r in recs:
        assert 0.0 <= r.metrics["accuracy"] <= 1.0 and 0.0 <= r.metrics["train_accuracy"] <= 1.0
        assert r.metrics["loss_test"] > 0 and r.metrics["test_examples"] == 16 and HEAD not in r.layer_densities
    states = [torch.load(tmp_path / r.where / "final.pt") for r in recs]
    ticket = trial().typed.ticket
    masks = [ticket_mask(tk, ticket, level) for level in range(3)]
    for state, mask in zip(states, masks):
        for name, m in mask.masks.items():
            assert int(torch.count_nonzero(state[f"{name}.weight"][~m])) == 0  # pruned stays exactly zero
    # level 2 keeps the largest |w| of level 1's trained weights among level 1's mask (LTH's step), nested
    scores = {n: states[1][f"{n}.weight"].abs() for n in masks[1].masks}
    expect = keep_top(scores, masks[1], level_counts(total, 2)[2])
    assert all(torch.equal(expect[n], masks[2].masks[n]) for n in expect)
    assert all(not bool((masks[2].masks[n] & ~masks[1].masks[n]).any()) for n in expect)
    assert tk.fits == 3
    rnd = list(run_trial(trial(method="random"), tk))
    assert [r.kept for r in rnd] == level_counts(total, 2) and tk.fits == 5  # the dense level is shared
    again = Tickets(TrunkStore(tmp_path))
    assert [r.metrics["accuracy"] for r in run_trial(trial(), again)] == [r.metrics["accuracy"] for r in recs]
    assert again.fits == 0


def test_denoising_masks_train_without_head_and_classification_masks_fit_the_dip_with_a_dense_head(tmp_path):
    tk = Tickets(TrunkStore(tmp_path))
    src = trial(source_task="denoise", levels=1)
    lip = list(run_trial(src, tk))
    chain = TrialConfig(image="Set5/baby", task="denoise", size=64, width=4, iters=10).chain()
    found = tk.mask(chain, 1)
    assert lip[1].source_mask == f"{chain.chain_key}/1" and lip[1].method == "imp"
    assert lip[1].kept == found.kept - int(found.masks[HEAD].sum()) and HEAD not in lip[1].layer_densities
    assert lip[0].mask_hash == dense_mask(ModelConfig(width=4)).hash
    on_dip = list(run_trial(trial(kind="classify_transfer", levels=1), tk))
    ticket = ticket_mask(tk, trial().typed.ticket, 1)
    head = conv_weights(build_model(ModelConfig(width=4), 0))[HEAD].numel()
    assert on_dip[1].layer_densities[HEAD] == 1.0 and on_dip[1].kept == ticket.kept + head == 3328 + 12
    assert np.isfinite(on_dip[1].metrics["psnr_ema"]) and on_dip[0].method == "dense"
    ref = list(run_trial(trial(kind="classify_transfer", source_task="denoise", levels=1), tk))
    assert ref[1].mask_hash == found.hash  # the denoising LIP on its own task: the chain's level itself


def test_a_mask_that_empties_a_layer_trains_with_its_pruned_weights_still_exactly_zero(tmp_path):
    """An emptied first down conv leaves the hourglass behind it constant; BatchNorm on a constant overflows
    the gradients along that path: they are dropped (and counted), not written into pruned weights."""
    training = trial().typed.training
    dense = dense_mask(training.model)
    empty = MaskSet({n: torch.zeros_like(m) if n == "levels.0.down1.conv" else m for n, m in dense.masks.items()})
    rec = evaluate(Tickets(TrunkStore(tmp_path)), training, empty)
    state = torch.load(tmp_path / rec.where / "final.pt")
    assert int(torch.count_nonzero(state["levels.0.down1.conv.weight"])) == 0
    assert rec.metrics["nonfinite_steps"] >= 1 and 0.0 <= rec.metrics["accuracy"] <= 1.0
    assert rec.kept == dense.kept - 4 * 32 * 9


def _folder(root: Path, classes: dict[str, int]) -> Path:
    rng = np.random.default_rng(0)
    for name, n in classes.items():
        (root / name).mkdir(parents=True)
        for i in range(n):
            Image.fromarray(rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)).save(root / name / f"{i}.png")
    return root


def _cifar(root: Path) -> Path:
    root.mkdir()
    for i, name in enumerate(classify_data.CIFAR_FILES):
        data = np.full((4, 3072), 40 * i, dtype=np.uint8)
        with (root / name).open("wb") as f:
            pickle.dump({b"data": data, b"labels": [0, 1, 2, 3]}, f)
    with (root / "batches.meta").open("wb") as f:
        pickle.dump({b"label_names": [b"cat", b"dog", b"ship", b"frog"]}, f)
    return root


def test_image_folders_cifar_batches_and_lfw_load_with_fixed_stratified_splits(tmp_path):
    folder = _folder(tmp_path / "set", {"a": 8, "b": 4})
    data = classify_data.load(str(folder), 32, None)
    assert data.classes == ("a", "b") and data.train_x.shape == (9, 3, 32, 32) and data.train_x.dtype == torch.uint8
    assert data.train_y.tolist() == [0] * 6 + [1] * 3 and data.test_y.tolist() == [0, 0, 1]
    cifar = classify_data.load(f"cifar10:{_cifar(tmp_path / 'c')}", 64, None)
    assert cifar.classes == ("cat", "dog", "ship", "frog") and cifar.train_x.shape == (20, 3, 64, 64)
    assert len(cifar.test_y) == 4 and int(cifar.train_x[4].min()) == int(cifar.train_x[4].max()) == 40
    assert int(cifar.test_x.float().mean()) == 200  # test_batch, constant 200 before and after resizing
    faces = classify_data.load("lfw_faces", 64, None)
    assert (faces.train_y.bincount().tolist(), faces.test_y.bincount().tolist()) == ([75, 75], [25, 25])
    assert classify_data.load("lfw_faces", 64, 6).train_y.tolist() == [0, 0, 0, 1, 1, 1]
    assert torch.equal(faces.train_x[:, 0], faces.train_x[:, 2])  # grey replicated to RGB


@pytest.mark.parametrize("make,fields,field,message", [
    (lambda tmp: (tmp / "empty").mkdir() or tmp / "empty", {}, "data", "holds no images"),
    (lambda tmp: _folder(tmp / "one", {"only": 3}), {}, "data", "has one class"),
    (lambda tmp: f"cifar10:{(tmp / 'nothing').mkdir() or tmp / 'nothing'}", {}, "data", "lacks data_batch_1"),
    (lambda tmp: "mnist", {}, "data", "unknown dataset"),
    (lambda tmp: None, {}, "data", "needs a labelled image set"),
    (lambda tmp: "lfw_faces", {"size": 96, "depth": 6}, "size", "at least 128"),
    (lambda tmp: "lfw_faces", {"epochs": 0}, "epochs", "positive integer"),
    (lambda tmp: None, {"kind": "chain", "examples": None, "epochs": 3}, "epochs", "only kinds classify, classify_transfer do"),
])
def test_bad_input_is_one_line_naming_the_field(tmp_path, make, fields, field, message):
    data = make(tmp_path)
    with pytest.raises(ConfigError) as err:
        TrialConfig(**{**BASE, "data": None if data is None else str(data), **fields})
    assert err.value.field == field and message in err.value.message and "\n" not in str(err.value)


def test_a_bad_data_set_stops_the_cli_before_any_work(tmp_path, capsys):
    assert main(["show", "classification_transfer", "--profile", "smoke", "--store", str(tmp_path),
                 "--set", "data=cifar10:/no/such/dir"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "data" in err and "lacks data_batch_1" in err


@pytest.mark.parametrize("profile", PROFILES)
def test_the_experiment_validates_and_prices_every_profile(profile, capsys, tmp_path):
    assert main(["show", "classification_transfer", "--profile", profile, "--json", "--store", str(tmp_path)]) == 0
    info = json.loads(capsys.readouterr().out)
    exp = load("classification_transfer", profile)
    assert info["trials"] == len(exp.trials) > 0 and info["fits_needed"] >= len(exp.trials)
    assert {t.kind for t in exp.trials} == {"classify", "classify_transfer"}
    assert all(t.params()["data"] == t.data for t in exp.trials)  # the report facets on the logged data set
    if profile == "local":
        assert exp.time_budget_s <= 3600 and info["cpu_core_hours"] * 3600 / 2 < exp.time_budget_s / 2
    if profile == "paper":
        assert exp.resources["gpu"] > 0 and {t.data for t in exp.trials} == {"cifar10", "imagenet20"}
        assert {t.width for t in exp.trials} == {128} and len({t.seed for t in exp.trials}) == 10
    if profile == "smoke":
        assert all(t.iters is not None and t.iters <= 20 for t in exp.trials)


def test_the_report_draws_accuracy_psnr_and_layer_profiles(tmp_path):
    from lipsweep.analysis.classification import classification_report
    from lipsweep.analysis.report import Report

    rows = []
    for seed in (0, 1):
        for kind, source, method, metric in (("classify", None, "imp", "accuracy"), ("classify", None, "random", "accuracy"),
                                             ("classify", "denoise", "imp", "accuracy"),
                                             ("classify_transfer", None, "imp", "psnr_ema")):
            # the params columns are what such a run logs (no hand-made facet: issue 25's review found one hiding
            # that classification runs did not log ``data``)
            logged = trial(kind=kind, method=method, seed=seed, **({"source_task": source} if source else {})).params()
            for level in range(3):
                rows.append({**logged, "run_id": f"{kind}{source}{method}{seed}", "level": level,
                             "sparsity": 1 - 0.8**level, "kept": 100 * 0.8**level,
                             metric: 0.9 - 0.1 * level + 0.01 * seed})
    frame = pd.DataFrame(rows)
    rep = Report(tmp_path)
    classification_report(rep, frame, lambda run, level: {"levels.0.down1.conv": 0.9, "levels.4.up2.conv": 0.5})
    titles = [t for t, _, _ in rep.sections]
    assert titles == ["Classification accuracy", "Classification tickets on restoration", "Layer-wise sparsity"]
    table = pd.read_csv(tmp_path / "accuracy.csv")
    assert set(table["series"]) == {"classification ticket (lth)", "classification random (lth)", "denoise LIP (lth)"}
    assert table.loc[table["series"] == "classification ticket (lth)", "36.0%"].iloc[0] == "0.7050 ± 0.0071"
    assert (tmp_path / "transfer_psnr.png").is_file() and (tmp_path / "layerwise.png").is_file()
    layers = pd.read_csv(tmp_path / "layerwise.csv")
    assert set(layers["target_sparsity"]) == {0.36}
    assert set(layers["method"]) == {"classification ticket (lth)", "classification random (lth)", "denoise LIP (lth)"}
    # runs logged before `data` was a classification param (a store from before issue 24): one panel, no crash
    older = Report(tmp_path / "older")
    (tmp_path / "older").mkdir()
    classification_report(older, frame.drop(columns="data"), lambda run, level: {"levels.0.down1.conv": 0.9})
    assert [t for t, _, _ in older.sections] == titles
    assert pd.read_csv(tmp_path / "older" / "accuracy.csv").equals(table.drop(columns="data"))
