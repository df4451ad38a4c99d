"""Typed trial kinds (issue 25): each kind declares the wire fields it reads, refuses any other at a
non-default value in one line naming the kinds that read it, logs exactly what it reads, and its runner gets
its own frozen config. Plus the sweep edge's checks that moved into the library (one preflight, a store
that must be a path, a resume across the package move refused in one line)."""

from __future__ import annotations

import dataclasses
import json

import pytest

from lipsweep.cli.main import main
from lipsweep.core.errors import ConfigError
from lipsweep.experiments.spec import load, parse_set
from lipsweep.kinds.base import FIELD_NAMES, KINDS
from lipsweep.kinds.classify.config import ClassifyTrial
from lipsweep.kinds.dip import ChainTrial, EvaluationTrial
from lipsweep.kinds.gan.config import GanTrial

TYPED = {"chain": ChainTrial, "evaluation": EvaluationTrial, "gan": GanTrial, "classify": ClassifyTrial,
         "classify_transfer": ClassifyTrial}
SMOKE = {"chain": "rewind_ablation", "evaluation": "transfer_tasks", "gan": "gan_lip",
         "classify": "classification_transfer", "classify_transfer": "classification_transfer"}


def test_every_field_is_read_by_some_kind_and_every_read_is_a_field():
    reads = {name: KINDS.get(name).reads for name in KINDS.names()}
    assert set(TYPED) <= set(reads)
    assert set().union(*reads.values()) == set(FIELD_NAMES)  # no field that nothing reads
    assert all(r <= set(FIELD_NAMES) and "kind" in r and "levels" in r for r in reads.values())
    assert len(reads["gan"]) == 22 and {"width", "depth", "rewind", "stop_k", "device"}.isdisjoint(reads["gan"])
    assert {"stop_k", "stop_tolerance", "stop_keep_going"}.isdisjoint(reads["evaluation"])


@pytest.mark.parametrize("kind", sorted(TYPED))
def test_each_kind_parses_into_its_own_frozen_config_and_logs_only_what_it_reads(kind):
    trial = next(t for t in load(SMOKE[kind], "smoke").trials if t.kind == kind)
    assert type(trial.typed) is TYPED[kind] and dataclasses.is_dataclass(trial.typed)
    with pytest.raises(dataclasses.FrozenInstanceError):
        trial.typed.levels = 99
    assert trial.typed.levels == trial.levels
    assert set(trial.params()) <= KINDS.get(kind).reads


@pytest.mark.parametrize("kind,field,value", [("gan", "width", 64), ("gan", "depth", 4), ("gan", "shared_z", False),
                                              ("gan", "stop_tolerance", 0.1), ("evaluation", "stop_k", 2),
                                              ("chain", "epochs", 3), ("classify", "at_levels", [1]),
                                              ("classify", "platform_key", True)])
def test_a_field_the_kind_does_not_read_is_refused_naming_the_kinds_that_read_it(kind, field, value):
    with pytest.raises(ConfigError) as err:
        load(SMOKE[kind], "smoke", parse_set([f"{field}={json.dumps(value)}"]))
    readers = [n for n in KINDS.names() if field in KINDS.get(n).reads]
    assert err.value.field.endswith(f"--set.{field}") and f"{field}: kind {kind!r} does not read it" in str(err.value)
    assert f"only kinds {', '.join(readers)} do" in str(err.value) and kind not in readers


def test_set_width_on_a_gan_experiment_is_one_line_before_anything_runs(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["run", "gan_lip", "--profile", "smoke", "--set", "width=64"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("lipsweep run: error: ") and "width: kind 'gan' does not read" in err[0]
    assert not (tmp_path / "runs").exists() and not (tmp_path / "mlflow.db").exists()


def test_a_default_value_of_an_unread_field_is_the_same_trial():
    base = load("gan_lip", "smoke")
    same = load("gan_lip", "smoke", parse_set(["width=128", "depth=5"]))  # the defaults: nothing is set
    assert [t.key for t in same.trials] == [t.key for t in base.trials]


def test_a_store_that_is_not_a_path_is_refused_by_run_sweep_itself(tmp_path):
    from lipsweep.sweep.options import SweepOptions
    from lipsweep.sweep.tune import run_sweep

    exp = load("rewind_ablation", "smoke")
    with pytest.raises(ConfigError) as err:
        run_sweep(exp, SweepOptions(store="s3://bucket/store", storage=str(tmp_path / "runs")))
    assert err.value.field == "store" and "filesystem path" in str(err.value)
    assert not (tmp_path / "runs").exists()


def test_a_resume_of_a_sweep_from_before_the_package_move_is_refused_in_one_line(tmp_path):
    """A sweep started by the flat layout (its ``lipsweep.json`` has no ``layout``) pickled classes that no
    longer exist under those names: refused before Ray starts, with the command that costs nothing."""
    from lipsweep.sweep.options import SweepOptions
    from lipsweep.sweep.tune import LAYOUT, _check_resume

    path = tmp_path / "runs" / "sweep"
    path.mkdir(parents=True)
    (path / "tuner.pkl").write_bytes(b"")  # what Tune checks for a restorable experiment
    (path / "lipsweep.json").write_text(json.dumps({"tracking_uri": "sqlite:///mlflow.db"}))
    opts = SweepOptions(resume=True)
    with pytest.raises(ConfigError) as err:
        _check_resume(str(path), opts)
    assert err.value.field == "--resume" and "without --resume" in str(err.value)
    (path / "lipsweep.json").write_text(json.dumps({"tracking_uri": "sqlite:///mlflow.db", "layout": LAYOUT}))
    assert _check_resume(str(path), opts) is True
