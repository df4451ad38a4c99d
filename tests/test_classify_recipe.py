"""``classify_recipe: reference`` (issue 27; docs/science.md section 1, the classifier): the reference code's classification
ticket (VITA-Group/Chasing-Better-DIPs ``LTH_IMP_Classification.py``): fresh 3-channel input convs never
masked, 1x1 conv -> Flatten -> Linear -> Sigmoid, SGD stepped at 1/2 and 3/4 of the epochs, no rewinding.
``lth`` stays what it was, key for key. Tiny scale: width 4, 64 px, 16 LFW images per split, one epoch."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from lipsweep.core.errors import ConfigError
from lipsweep.kinds.base import TrialConfig, run_trial
from lipsweep.kinds.classify import model as classify_model
from lipsweep.kinds.classify.kind import ticket_mask
from lipsweep.kinds.classify.masks import HEAD, INPUTS
from lipsweep.kinds.classify.model import build_classifier, milestones, optimizer_for
from lipsweep.lottery.store import TrunkStore
from lipsweep.lottery.tickets import Tickets
from lipsweep.priors import ModelConfig, build_model, conv_weights
from lipsweep.pruning.methods import keep_top, level_counts

BASE = {"kind": "classify", "data": "lfw_faces", "size": 64, "width": 4, "epochs": 1, "examples": 16, "levels": 2,
        "iters": 10, "classify_recipe": "reference"}
SMOKE = {"data": "lfw_faces", "size": 64, "width": 8, "iters": 10, "levels": 1, "epochs": 1, "examples": 16}


def trial(**kw) -> TrialConfig:
    return TrialConfig(**{**BASE, **kw})


def test_the_reference_classifier_reads_rgb_with_fresh_input_convs_and_ends_in_a_sigmoid_over_flatten_linear():
    cfg = ModelConfig(width=4)
    clf, dip = build_classifier(cfg, 2, 1, "reference", 64), build_model(cfg, 1)
    convs, theta0 = conv_weights(clf), conv_weights(dip)
    assert list(convs) == list(theta0) and all(convs[n].shape[1] == 3 for n in INPUTS)
    assert all(torch.equal(convs[n], theta0[n]) for n in convs if n not in INPUTS)  # head included
    assert all(not torch.equal(convs[n], theta0[n][:, :3]) for n in INPUTS)  # a fresh init, not theta_0's slices
    again, other = build_classifier(cfg, 2, 1, "reference", 64), build_classifier(cfg, 2, 2, "reference", 64)
    assert all(torch.equal(conv_weights(again)[n], convs[n]) for n in INPUTS)  # deterministic from the seed
    assert not torch.equal(conv_weights(other)[n := INPUTS[1]], convs[n])
    x = torch.rand(2, 3, 64, 64)
    clf.eval()
    out = clf(x)
    assert torch.equal(out, torch.sigmoid(clf.fc(clf.head(clf._level(x, 0)).flatten(1))))
    assert out.shape == (2, 2) and bool(((out > 0) & (out < 1)).all()) and clf.fc.in_features == 3 * 64 * 64
    assert build_classifier(ModelConfig(), 10, 0, "reference", 50).fc.in_features == 7500  # the reference's Linear


def test_the_reference_optimizer_is_sgd_stepped_down_at_half_and_three_quarters_of_the_epochs():
    w = torch.nn.Parameter(torch.zeros(3))
    opt, schedule = optimizer_for("reference", [w], 0.01, 182)
    assert isinstance(opt, torch.optim.SGD) and milestones(182) == [91, 136]
    group = opt.param_groups[0]
    assert (group["lr"], group["momentum"], group["weight_decay"]) == (0.01, 0.9, 2e-4)
    lrs = []
    for _ in range(182):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        schedule.step()
    assert lrs[90] == 0.01 and lrs[91] == pytest.approx(1e-3) and lrs[136] == pytest.approx(1e-4)
    assert lrs[135] == pytest.approx(1e-3) and milestones(1) == [1, 1]
    adam, none = optimizer_for("lth", [w], 0.01, 182)
    assert isinstance(adam, torch.optim.Adam) and none is None


def test_a_reference_ticket_trains_on_from_the_last_level_and_never_prunes_its_input_convs(tmp_path, monkeypatch):
    starts, recipes = [], []
    real_train, real_opt = classify_model.train, classify_model.optimizer_for

    def spy_train(model, *args, **kw):
        starts.append({k: v.detach().clone() for k, v in model.state_dict().items()})
        return real_train(model, *args, **kw)

    def spy_opt(recipe, *args):
        recipes.append(recipe)
        return real_opt(recipe, *args)

    monkeypatch.setattr(classify_model, "train", spy_train)
    monkeypatch.setattr(classify_model, "optimizer_for", spy_opt)
    tk = Tickets(TrunkStore(tmp_path))
    recs = list(run_trial(trial(), tk))
    total = sum(w.numel() for n, w in conv_weights(build_model(ModelConfig(width=4), 0)).items() if n not in INPUTS)
    assert [r.kept for r in recs] == level_counts(total, 2) and recs[0].total == total
    assert all(HEAD in r.layer_densities and not set(INPUTS) & set(r.layer_densities) for r in recs)
    assert recipes == ["reference"] * 3 and tk.fits == 3
    finals = [torch.load(tmp_path / r.where / "final.pt") for r in recs]
    masks = [ticket_mask(tk, trial().typed.ticket, level) for level in range(3)]
    theta0 = build_classifier(ModelConfig(width=4), 2, 0, "reference", 64).state_dict()
    assert all(torch.equal(starts[0][k], theta0[k]) for k in theta0)  # level 0 from theta_0
    for level in (1, 2):  # no rewinding: every tensor where the last level's training left it
        assert all(torch.equal(starts[level][k], finals[level - 1][k]) for k in theta0)
        assert not torch.equal(starts[level]["levels.2.down2.conv.weight"], theta0["levels.2.down2.conv.weight"])
        for name, m in masks[level].masks.items():  # trained x mask: pruned weights exactly zero
            assert int(torch.count_nonzero(finals[level][f"{name}.weight"][~m])) == 0
    for final in finals:  # the input convs: trained, never masked, no zero weight
        assert all(int((final[f"{n}.weight"] == 0).sum()) == 0 for n in INPUTS)
    assert all(not torch.equal(finals[2][f"{n}.weight"], theta0[f"{n}.weight"]) for n in INPUTS)
    scores = {n: finals[1][f"{n}.weight"].abs() for n in masks[1].masks}  # IMP ranks level 1's trained weights
    expect = keep_top(scores, masks[1], level_counts(total, 2)[2])
    assert all(torch.equal(expect[n], masks[2].masks[n]) for n in expect)
    rnd = list(run_trial(trial(method="random"), tk))
    assert [r.kept for r in rnd] == level_counts(total, 2) and tk.fits == 5  # level 0 shared
    assert all(torch.equal(starts[-1][k], torch.load(tmp_path / rnd[1].where / "final.pt")[k]) for k in theta0)
    again = Tickets(TrunkStore(tmp_path))
    assert [r.mask_hash for r in run_trial(trial(), again)] == [r.mask_hash for r in recs] and again.fits == 0


def test_masks_cross_between_the_reference_classifier_and_the_dip_with_the_input_convs_dense(tmp_path):
    tk = Tickets(TrunkStore(tmp_path))
    lip = list(run_trial(trial(source_task="denoise", levels=1), tk))  # the denoising LIP, trained from theta_0
    assert HEAD in lip[1].layer_densities and not set(INPUTS) & set(lip[1].layer_densities)
    assert lip[1].source_mask.endswith("/1") and 0.0 <= lip[1].metrics["accuracy"] <= 1.0
    on_dip = list(run_trial(trial(kind="classify_transfer", levels=1), tk))
    ticket = ticket_mask(tk, trial().typed.ticket, 1)
    inputs = sum(conv_weights(build_model(ModelConfig(width=4), 0))[n].numel() for n in INPUTS)
    assert all(on_dip[1].layer_densities[n] == 1.0 for n in INPUTS) and on_dip[1].kept == ticket.kept + inputs
    assert on_dip[1].layer_densities[HEAD] <= 1.0 and on_dip[1].source_mask.startswith("classify/")


def test_the_recipe_sizes_cifar_at_50_px_and_reads_class_lr_as_its_sgd_step():
    ref, lth = (TrialConfig(kind="classify", data="cifar10", width=4, classify_recipe=r) for r in ("reference", "lth"))
    assert (ref.typed.training.size, lth.typed.training.size) == (50, 64)
    assert (ref.typed.training.lr, lth.typed.training.lr) == (0.01, 0.001) and ref.params()["class_lr"] == 0.01
    assert trial(class_lr=0.05).typed.training.lr == 0.05


@pytest.mark.parametrize("fields,field,message", [
    ({"classify_recipe": "sgd"}, "classify_recipe", "allowed: "),
    ({"size": 32}, "size", "at least 33"),
    ({"rewind": 0.1}, "rewind", "trains on from the last level"),
    ({"classify_recipe": "lth", "size": 50}, "size", "multiple of 32"),
])
def test_bad_recipe_input_is_one_line_naming_the_field(fields, field, message):
    with pytest.raises(ConfigError) as err:
        trial(**fields)
    assert err.value.field == field and message in err.value.message and "\n" not in str(err.value)


def test_lth_keys_are_the_keys_pinned_before_the_recipe_existed():
    keys = {kind: TrialConfig(kind=kind, **SMOKE) for kind in ("classify", "classify_transfer")}
    assert keys["classify"].key == "0a65ba5b9bcbbbbd" and keys["classify_transfer"].key == "32bb7b131cc74dd2"
    assert keys["classify"].typed.ticket.key == "a3f0461e8f4bed55"
    assert keys["classify"].typed.training.key == "92f63baebc06071a"
    assert TrialConfig(kind="classify", source_task="denoise", **SMOKE).key == "8fae32c78f52d281"
    ref = TrialConfig(kind="classify", classify_recipe="reference", **SMOKE)
    assert ref.key != keys["classify"].key and ref.typed.ticket.key != keys["classify"].typed.ticket.key


def test_the_report_draws_one_accuracy_panel_per_recipe_and_names_each_curves_recipe(tmp_path):
    from lipsweep.analysis.classification import classification_report
    from lipsweep.analysis.report import Report

    rows = []
    for recipe in ("reference", "lth"):
        for kind, source, metric in (("classify", None, "accuracy"), ("classify", "denoise", "accuracy"),
                                     ("classify_transfer", None, "psnr_ema"), ("classify_transfer", "denoise", "psnr_ema")):
            logged = trial(kind=kind, classify_recipe=recipe, **({"source_task": source} if source else {})).params()
            for level in range(3):
                rows.append({**logged, "run_id": f"{kind}{source}{recipe}", "level": level, "sparsity": 1 - 0.8**level,
                             "kept": 100 * 0.8**level, metric: 0.9 - 0.1 * level - 0.05 * (recipe == "lth")})
    rep = Report(tmp_path)
    classification_report(rep, pd.DataFrame(rows), lambda run, level: {"levels.1.down1.conv": 0.9})
    text = {t: s for t, s, _ in rep.sections}
    table = pd.read_csv(tmp_path / "accuracy.csv")
    assert set(zip(table["classify_recipe"], table["series"])) == {
        ("reference", "classification ticket (reference)"), ("reference", "denoise LIP (reference)"),
        ("lth", "classification ticket (lth)"), ("lth", "denoise LIP (lth)")}
    assert "(reference): the reference code's recipe" in text["Classification accuracy"]
    assert "(lth): lipsweep's LTH recipe" in text["Classification accuracy"]
    psnr = pd.read_csv(tmp_path / "transfer_psnr.csv")
    assert set(psnr["series"]) == {"classification ticket (reference)", "classification ticket (lth)", "denoise LIP"}
    assert "no rewinding" in text["Classification tickets on restoration"]
