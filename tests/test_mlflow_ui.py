"""What the MLflow UI shows of a sweep (issue 28): a training experiment (not MLflow 3's GenAI view), run
names that fit its tables, a run's params = what its kind reads, a description per run, and where a level
was computed said once. Real MLflow stores (SQLite under tmp_path), real experiment specs; no Ray."""

from __future__ import annotations

from dataclasses import fields

import numpy as np
import pytest
from mlflow.tracking import MlflowClient
from PIL import Image

from lipsweep.experiments.labels import trial_labels
from lipsweep.experiments.spec import load
from lipsweep.kinds.base import KINDS, TrialConfig
from lipsweep.sweep.driver import LABEL_TAG, run_params, sweep_note, trial_tags
from lipsweep.tracking.tracker import KIND, KIND_TAG, NODE_TAG, NOTE_TAG, PLATFORM_TAG, Tracker

PLATFORM = {"device": "cpu", "cpu_capability": "AVX2", "device_name": "test cpu", "torch": "2.0", "threads": 1}
ELSEWHERE = {**PLATFORM, "cpu_capability": "AVX512"}
AXES = {"rewind", "rewind_budget", "imp_target", "seed", "rewind_source", "keep_input_convs"}  # vary in local


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> str:
    """One SQLite store for the module (making one runs MLflow's migrations: seconds); an experiment per test."""
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"


def test_every_experiment_is_tagged_a_training_one_also_one_made_before_the_tag(store):
    client = MlflowClient(store)
    old = client.create_experiment("lipsweep/old")  # as lipsweep made it before issue 28: no kind tag
    assert KIND_TAG not in client.get_experiment(old).tags
    for name in ("lipsweep/old", "lipsweep/new"):
        tracker = Tracker(store, name, "Fig. 9: rewinding")
        tags = client.get_experiment(tracker.experiment_id).tags
        assert tags[KIND_TAG] == KIND == "custom_model_development" and tags[NOTE_TAG] == "Fig. 9: rewinding"
    assert Tracker(store, "lipsweep/old").experiment_id == old  # found again, not made twice


def test_run_names_are_short_unique_and_name_only_the_axes_that_vary():
    exp = load("rewind_ablation", "local")
    assert len(exp.labels) == len(set(exp.labels)) == len(exp.trials) == 31
    assert max(len(label) for label in exp.labels) <= 18  # MLflow's runs table cuts names at ~18 characters
    assert exp.labels[:2] == ("rw0 s0", "rw0 rem s0") and "rw.05 rem clean s0" in exp.labels
    assert not any(word in label for label in exp.labels for word in ("baby", "denoise", "imp ", "w16"))
    for t, long in zip(exp.trials, exp.long_labels):  # the full label: every varying field, its final value
        pairs = dict(kv.split("=") for kv in long.split(","))
        assert set(pairs) == AXES and pairs["rewind"] == str(t.rewind) and pairs["seed"] == str(t.seed)
    assert load("rewind_ablation", "smoke").labels == ("rw0", "rw.1")


def test_short_names_that_would_repeat_fall_back_to_the_full_labels(tmp_path):
    files = []
    for folder in ("a", "b"):  # two images with one file name: "x" would name both runs
        (tmp_path / folder).mkdir()
        Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(tmp_path / folder / "x.png")
        files.append(str(tmp_path / folder / "x.png"))
    trials = tuple(TrialConfig(image=f, size=64, width=8, iters=20, levels=1) for f in files)
    short, long = trial_labels(trials, {"image": files})
    assert short == long == tuple(f"image={f}" for f in files)


def test_a_runs_params_are_the_fields_its_kind_reads_that_apply(store):
    exp = load("rewind_ablation", "local")
    params = run_params(exp.trials)
    reads = KINDS.get("chain").reads
    defaults = {f.name: f.default for f in fields(TrialConfig)}
    for t in exp.trials:
        mine = params[t.key]
        assert len(mine) == 21 and set(mine) <= reads and AXES <= set(mine)
        left_out = set(t.params()) - set(mine)  # SGLD, SynFlow, multi-image, stop rule...: all at their defaults
        assert len(left_out) == 22 and all(getattr(t, k) == defaults[k] for k in left_out)  # 5 are issue 29's
        assert {"synflow_rounds", "burnin", "shared_z", "stop_k", "threads"} <= left_out
    tracker = Tracker(store, "lipsweep/params")
    t = exp.trials[0]
    run = tracker.child(tracker.parent("sweep", "sweep", {"profile": "local"}), t.key, exp.labels[0], params[t.key])
    logged = tracker.client.get_run(run).data.params
    assert len(logged) == 21 and logged["iters"] == "500" and logged["ema"] == "0.99" and logged["rewind"] == "0.0"


def test_each_run_has_a_description_and_its_full_label(store):
    exp = load("rewind_ablation", "local")
    tags = trial_tags(exp, run_params(exp.trials))
    tracker = Tracker(store, "lipsweep/notes")
    parent = tracker.parent("sweep", "rewind_ablation [local]", {"profile": "local"}, sweep_note(exp))
    i = exp.labels.index("rw.05 rem clean s0")
    t = exp.trials[i]
    run = tracker.client.get_run(tracker.child(parent, t.key, exp.labels[i], {}, tags=tags[t.key]))
    note = run.data.tags[NOTE_TAG]
    assert note.splitlines()[0] == ("imp chain on Set5/baby, denoise at 64 px (IMP on the clean image): 8 levels "
                                    "to 83% sparsity, rewinding to 5% of the dense fit (remaining budget); 500 "
                                    "iterations a level, seed 0.")
    assert note.splitlines()[-1] == run.data.tags[LABEL_TAG] == exp.long_labels[i]
    assert run.info.run_name == "rw.05 rem clean s0"
    sweep = tracker.client.get_run(parent).data.tags[NOTE_TAG]
    assert sweep.startswith("Fig. 9, rewind_ablation [local]: 31 trials over ") and "psnr_ema" in sweep


def level(i: int, platform: dict, node: str) -> dict:
    return {"level": i, "sparsity": 1 - 0.8 ** i, "psnr_ema": 20.0 + i, "platform": platform, "node_id": node}


def test_where_a_level_was_computed_is_said_once_and_per_level_only_where_it_differs(store):
    tracker = Tracker(store, "lipsweep/platforms")
    parent = tracker.parent("sweep", "sweep", {})
    same, moved = tracker.child(parent, "a", "same", {}), tracker.child(parent, "b", "moved", {})
    for i in range(9):
        assert tracker.log_level(same, level(i, PLATFORM, "node-1"), None)
        assert tracker.log_level(moved, level(i, PLATFORM if i < 7 else ELSEWHERE, "node-1" if i < 8 else "node-2"),
                                 None)
    run = tracker.client.get_run(same)
    assert set(run.data.metrics) == {"sparsity", "psnr_ema"}  # once, at step = level: X axis = metric sparsity
    assert [m.step for m in tracker.client.get_metric_history(same, "psnr_ema")] == list(range(9))
    tags = run.data.tags
    where = {k: v for k, v in tags.items() if k.startswith(("lipsweep.platform", "lipsweep.node"))}
    assert where == {PLATFORM_TAG: "cpu AVX2 (test cpu), torch 2.0, 1 thread", f"{PLATFORM_TAG}s": "1",
                     NODE_TAG: "node-1"}  # 3 tags for 9 levels, not 2 per level
    tags = tracker.client.get_run(moved).data.tags
    assert tags[PLATFORM_TAG] == "mixed: cpu AVX2 (test cpu), torch 2.0, 1 thread | cpu AVX512 (test cpu), torch " \
                                 "2.0, 1 thread" and tags[f"{PLATFORM_TAG}s"] == "2" and tags[NODE_TAG] == "node-1"
    per_level = sorted(k for k in tags if ".level_" in k)
    assert per_level == [f"{NODE_TAG}.level_08", f"{PLATFORM_TAG}.level_07", f"{PLATFORM_TAG}.level_08"]
