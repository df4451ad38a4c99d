"""The package as users install it: a wheel holds every experiment and lipsweep.analysis; importing lipsweep
changes no environment variable; the code keeps its functions short; trial fields map to nested configs."""

from __future__ import annotations

import ast
import json
import os
import shutil
import subprocess
import sys
import zipfile
from dataclasses import fields
from pathlib import Path

import pytest

from lipsweep.experiments.spec import experiment_names, load, parse_set
from lipsweep.kinds.base import FIELD_NAMES, TrialConfig

ROOT = Path(__file__).resolve().parent.parent
MAX_FUNCTION_LINES = 60


@pytest.mark.slow  # a pip wheel build and install
def test_a_wheel_installs_every_experiment_and_the_analysis_package(tmp_path):
    src = tmp_path / "src"
    for part in ("lipsweep", "analysis", "search_spaces"):
        shutil.copytree(ROOT / part, src / part, ignore=shutil.ignore_patterns("__pycache__"))
    for part in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / part, src / part)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(tmp_path / "dist"), str(src)],
                   check=True, capture_output=True)
    wheel = next((tmp_path / "dist").glob("lipsweep-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert {f"lipsweep/search_spaces/{n}.yaml" for n in experiment_names()} <= set(names)
    assert "lipsweep/analysis/report.py" in names and not any(n.startswith("analysis/") for n in names)
    assert "lipsweep/data/generators/faces32.pt" in names and "lipsweep/data/images/lfw_faces/face_080.png" in names
    subprocess.run([*pip, "install", "--no-deps", "--target", str(tmp_path / "site"), str(wheel)], check=True,
                   capture_output=True)
    code = ("import lipsweep.experiments.spec as e, lipsweep.analysis.report as r; from lipsweep.cli.main import main; "
            "print(e.search_spaces()); print(r.__file__); main(['list'])")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": str(tmp_path / "site")}).stdout.splitlines()
    assert out[0].startswith(str(tmp_path / "site")) and out[1].startswith(str(tmp_path / "site"))
    names = [line.split()[0] for line in out[2:] if not line.startswith(" ")]  # descriptions wrap, indented
    assert names == experiment_names() and len(experiment_names()) == 19


def test_importing_lipsweep_changes_no_environment_variable():
    # the libraries set their own on import (Ray: RAY_CLIENT_MODE, MLflow: a telemetry id): import them first
    code = ("import os, json, ray.tune, mlflow, optuna, torch; before = dict(os.environ); "
            "import lipsweep.cli.main, lipsweep.sweep.tune, lipsweep.tracking.tracker, "
            "lipsweep.stopping.search, lipsweep.analysis.report; "
            "print(json.dumps(sorted(k for k in os.environ if os.environ[k] != before.get(k))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert json.loads(out.splitlines()[-1]) == []


def test_no_function_is_longer_than_a_screen():
    long = []
    for folder in ("lipsweep", "analysis"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    length = node.end_lineno - node.lineno + 1
                    if length > MAX_FUNCTION_LINES:
                        long.append(f"{path.relative_to(ROOT)}:{node.name} {length}")
    assert long == []


def test_every_trial_field_is_settable_and_reaches_its_nested_config():
    trial = TrialConfig(size=64, width=8, prune_fraction=0.3, iters=40, seed=2, rewind=0.1)
    chain = trial.chain()
    assert (chain.prune_fraction, chain.run.fit.iters, chain.run.seed, chain.run.model.width) == (0.3, 40, 2, 8)
    assert chain.rewind_iter == 4 and chain.chain_key != TrialConfig(size=64, width=8, iters=40, seed=2,
                                                                      rewind=0.1).chain().chain_key
    assert "prune_fraction" in FIELD_NAMES
    # each field declared with to="section.name", set away from its default, is that value in the nested config
    # chain() builds (its run, problem, model and fit; the stop rule for "stop")
    given = {"image": "DIP/inpainting/kate", "task": "inpaint", "size": 64, "inpaint_mask": "DIP/kate_mask",
             "width": 8, "depth": 4, "iters": 40, "lr": 0.02, "reg_noise_std": 0.05, "ema": 0.9, "backtrack": True,
             "param_noise": 0.01, "seed": 2, "threads": 2, "method": "synflow", "rewind": 0.1,
             "rewind_budget": "remaining", "rewind_source": "shared", "prune_fraction": 0.3, "sparsities": (0.5, 0.8), "levels": 2,
             "imp_target": "clean", "keep_input_convs": True, "multi_images": ("Set5/baby",), "shared_z": False,
             "synflow_rounds": 50, "target": "permuted", "channels": 1, "snapshots": (10,), "burnin": 20,
             "sample_every": 25, "stop_k": 3, "stop_tolerance": 0.5, "device": "cpu", "deterministic": True,
             "early_stop": "emv", "es_window": 10, "es_patience": 20, "es_alpha": 0.2, "es_stop": True, "es_lag": 5}
    routed = {f.name: f for f in fields(TrialConfig) if f.metadata["to"]}
    covered = set()
    for t in (TrialConfig(**given), TrialConfig(model="deep_decoder", size=64, width=8),
              TrialConfig(size=64, width=8, iters=40, early_stop="wmv", es_mask=True)):
        c = t.chain()
        nested = {"problem": c.run.problem, "model": c.run.model, "fit": c.run.fit, "run": c.run, "chain": c,
                  "stop": t.stop_rule()}
        for name, f in routed.items():
            value = getattr(t, name)
            if value != f.default:
                section, attr = f.metadata["to"].split(".")
                assert getattr(nested[section], attr) == value, f"{name} -> {f.metadata['to']}"
                covered.add(name)
    assert covered == set(routed)  # every routed field was set away from its default and checked


def test_prune_fraction_from_set_and_yaml_keeps_old_trial_keys_at_its_default():
    base = load("rewind_ablation", "smoke")
    same = load("rewind_ablation", "smoke", parse_set(["prune_fraction=0.2"]))
    other = load("rewind_ablation", "smoke", parse_set(["prune_fraction=0.5"]))
    assert [t.key for t in same.trials] == [t.key for t in base.trials]
    assert not {t.key for t in other.trials} & {t.key for t in base.trials}
    assert {t.chain().prune_fraction for t in other.trials} == {0.5}
    assert TrialConfig().key == "8d6f5300cfbaf7b3"  # schema 2; prune_fraction at its default adds nothing


@pytest.mark.parametrize("bad,field", [({"prune_fraction": 1.5}, "prune_fraction"), ({"levels": -1}, "levels"),
                                       ({"kind": "sgld"}, "kind"), ({"method": "grasp"}, "method")])
def test_bad_trial_fields_name_the_field(bad, field):
    from lipsweep.core.errors import ConfigError

    with pytest.raises(ConfigError) as err:
        TrialConfig(**bad)
    assert err.value.field == field


def test_fit_fields_reach_the_fit_and_can_switch_the_dips_extras_on_or_off():
    assert TrialConfig(model="deep_decoder").chain().run.fit.ema is None
    dd = TrialConfig(model="deep_decoder", ema=0.99, backtrack=True).chain().run.fit
    assert (dd.ema, dd.backtrack, dd.reg_noise_std, dd.iters) == (0.99, True, 0.0, 1900)
    off = TrialConfig(ema=0.0, backtrack=False).chain().run.fit
    assert (off.ema, off.backtrack) == (None, False) and TrialConfig().chain().run.fit.ema == 0.99
