"""Real Ray Tune trials and a real MLflow store (SQLite), at the smoke profile."""

import os
import signal
import subprocess
import sys
import time
from collections import Counter

import pytest
import yaml
from mlflow.tracking import MlflowClient

from lipsweep.errors import ConfigError
from lipsweep.experiments import load
from lipsweep.store import TrunkStore
from lipsweep.sweep import SweepOptions, run_sweep
from lipsweep.tracking import TRIAL_TAG


def options(tmp_path, tracking_uri_override=None, **kw):
    return SweepOptions(store=str(tmp_path / "store"), storage=str(tmp_path / "tune"),
                        tracking_uri=tracking_uri_override or f"sqlite:///{tmp_path / 'mlflow.db'}", quiet=True, **kw)


def runs(uri, name):
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(f"lipsweep/{name}")
    return client, client.search_runs([exp.experiment_id])


def fit_keys(store_root):
    return [tuple(sorted((k, str(v)) for k, v in e.items() if k not in ("seconds", "pid")))
            for e in TrunkStore(store_root).fit_log()]


def test_smoke_sweep_logs_one_run_per_trial_and_a_rerun_computes_nothing(ray_local, tmp_path):
    exp = load("rewind_ablation", "smoke")
    opts = options(tmp_path)
    summary = run_sweep(exp, opts)
    assert sorted(summary.finished) == sorted(t.key for t in exp.trials) and not summary.failed
    client, found = runs(opts.tracking_uri, "rewind_ablation")
    children = [r for r in found if r.data.tags.get("lipsweep.role") == "trial"]
    parents = [r for r in found if r.data.tags.get("lipsweep.role") == "sweep"]
    assert len(parents) == 1 and len(children) == len(exp.trials) == 2
    for r in children:
        assert r.info.status == "FINISHED"
        assert r.data.tags["mlflow.parentRunId"] == parents[0].info.run_id
        assert r.data.params["levels"] == "2" and r.data.params["method"] == "imp"
        assert r.data.params["rewind"] in ("0.0", "0.1")
        hist = client.get_metric_history(r.info.run_id, "sparsity")
        assert sorted((m.step, round(m.value, 4)) for m in hist) == [(0, 0.0), (1, 0.2), (2, 0.36)]
        assert len(client.get_metric_history(r.info.run_id, "psnr_ema")) == 3
        assert "level_02/mask.npz" in [a.path for a in client.list_artifacts(r.info.run_id, "level_02")]
    fits = fit_keys(opts.store)
    assert len(fits) == 1 + 2 * 2 and len(set(fits)) == len(fits)  # dense shared: 1 + 2 rewinds x 2 levels

    from lipsweep.plan import plan
    assert sum(p.fits_needed for p in plan(exp, TrunkStore(opts.store))) == 0  # `show` knows it is all stored
    assert sum(p.fits_needed for p in plan(load("rewind_ablation", "smoke", {"levels": 3}),
                                           TrunkStore(opts.store))) == 2  # only the new level, per rewind

    again = run_sweep(exp, opts)
    assert not again.failed
    assert fit_keys(opts.store) == fits  # nothing computed twice
    client, found2 = runs(opts.tracking_uri, "rewind_ablation")
    assert len(found2) == len(found)
    for r in children:
        assert len(client.get_metric_history(r.info.run_id, "sparsity")) == 3

    # Tune restores its pickled MLflow logger: resuming against another tracking URI is refused up front
    other = f"sqlite:///{tmp_path / 'other.db'}"
    with pytest.raises(ConfigError) as err:
        run_sweep(exp, options(tmp_path, resume=True, tracking_uri_override=other))
    assert err.value.field == "tracking_uri" and opts.tracking_uri in err.value.message
    assert not (tmp_path / "other.db").exists()  # nothing was recorded there
    resumed = run_sweep(exp, options(tmp_path, resume=True))
    assert not resumed.failed and fit_keys(opts.store) == fits


def test_a_failing_trial_is_retried_then_failed_without_losing_the_others(ray_local, tmp_path, image_file):
    doomed = image_file(64, 64, "RGB", "doomed.png")
    spec = yaml.safe_load(open(load("rewind_ablation", "smoke").file).read())
    spec["axes"] = {"image": ["Set5/baby", str(doomed)]}
    spec["profiles"]["smoke"]["axes"] = {}
    spec["profiles"]["smoke"]["base"]["levels"] = 1
    f = tmp_path / "rewind_ablation.yaml"
    f.write_text(yaml.safe_dump(spec))
    exp = load(str(f), "smoke")
    doomed.unlink()  # vanishes after validation: the trial raises in its worker, every retry
    opts = options(tmp_path, max_failures=1)
    summary = run_sweep(exp, opts)
    bad = next(t.key for t in exp.trials if t.image == str(doomed))
    assert summary.failed == [bad] and len(summary.finished) == 1
    client, found = runs(opts.tracking_uri, "rewind_ablation")
    status = {r.data.tags.get(TRIAL_TAG): r.info.status for r in found if TRIAL_TAG in r.data.tags}
    assert status[bad] == "FAILED" and list(status.values()).count("FINISHED") == 1
    good = next(r for r in found if r.data.tags.get(TRIAL_TAG) == summary.finished[0])
    assert len(client.get_metric_history(good.info.run_id, "sparsity")) == 2


def test_killed_driver_then_resume_finishes_without_duplicates_or_recomputation(tmp_path):
    spec = yaml.safe_load(open(load("rewind_ablation", "smoke").file).read())
    spec["profiles"]["smoke"]["base"] = {"size": 64, "width": 8, "iters": 60, "levels": 4}
    spec["axes"] = {"rewind": [0.0, 0.1], "seed": [0, 1]}
    spec["profiles"]["smoke"]["axes"] = {}
    f = tmp_path / "rewind_ablation.yaml"
    f.write_text(yaml.safe_dump(spec))
    args = [sys.executable, "-m", "lipsweep.cli", "run", str(f), "--profile", "smoke", "--store", "store",
            "--storage", str(tmp_path / "tune"), "--tracking-uri", "sqlite:///mlflow.db", "--quiet"]
    store = tmp_path / "store"
    driver = subprocess.Popen(args, cwd=tmp_path, start_new_session=True, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT)
    deadline = time.time() + 240
    while time.time() < deadline and len(TrunkStore(store).fit_log()) < 4 and driver.poll() is None:
        time.sleep(0.2)
    assert driver.poll() is None, driver.stdout.read().decode()[-2000:]
    os.killpg(driver.pid, signal.SIGKILL)
    driver.wait()
    done_before = len(TrunkStore(store).fit_log())
    assert 4 <= done_before < 2 * (1 + 2 * 4)  # interrupted mid-sweep: fewer fits than the sweep's 18

    resumed = subprocess.run([*args, "--resume"], cwd=tmp_path, capture_output=True, text=True, timeout=400)
    assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-3000:]
    assert "4 trials finished, 0 failed" in resumed.stdout
    fits = fit_keys(store)
    assert len(set(fits)) == len(fits), Counter(fits).most_common(2)  # no level fitted twice
    assert len(fits) == 2 * (1 + 2 * 4)  # per seed: one dense level + 2 rewinds x 4 levels
    client, found = runs(f"sqlite:///{tmp_path / 'mlflow.db'}", "rewind_ablation")
    children = [r for r in found if r.data.tags.get("lipsweep.role") == "trial"]
    assert len(children) == 4 and len([r for r in found if r.data.tags.get("lipsweep.role") == "sweep"]) == 1
    for r in children:
        assert r.info.status == "FINISHED"
        steps = [m.step for m in client.get_metric_history(r.info.run_id, "psnr_final")]
        assert sorted(steps) == [0, 1, 2, 3, 4]  # every level exactly once


def test_online_stop_rule_search_proposes_rules_and_replays_one_stored_chain(ray_local, tmp_path):
    exp = load("stop_threshold", "smoke")
    opts = options(tmp_path)
    summary = run_sweep(exp, opts)
    assert len(summary.finished) == 4 and not summary.failed
    fits = fit_keys(opts.store)
    assert len(fits) == 1 + 3 and len(set(fits)) == len(fits)  # the chain is computed once for all 4 trials
    client, found = runs(opts.tracking_uri, "stop_threshold")
    children = [r for r in found if r.data.tags.get("lipsweep.role") == "trial"]
    assert len(children) == 4
    for r in children:
        assert {"k", "tolerance", "offset", "smooth"} <= set(r.data.params)
        assert 0 <= r.data.metrics["sparsity"] <= 0.5 and "objective" in r.data.metrics
