"""Real Ray Tune trials and a real MLflow store (SQLite), at the smoke profile."""

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from lipsweep.core.errors import ConfigError
from lipsweep.core.platforms import current
from lipsweep.experiments.spec import load
from lipsweep.lottery.store import TrunkStore
from lipsweep.sweep.options import SweepOptions
from lipsweep.sweep.tune import run_sweep
from lipsweep.tracking.tracker import TRIAL_TAG


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
    assert_ui_compares(client, exp, parents[0], children)

    from lipsweep.experiments.plan import plan
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
    assert all(len(images(client, r.info.run_id)) == 3 for r in children)  # reruns log no image twice

    # --recompute: every level fitted again, the old entries kept aside, new runs under a new sweep run
    again = run_sweep(exp, options(tmp_path, recompute=True))
    assert not again.failed and again.parent_run_id != summary.parent_run_id
    assert len(fit_keys(opts.store)) == 2 * len(fits) and sorted(fit_keys(opts.store)[len(fits):]) == sorted(fits)
    assert len(list(Path(opts.store).rglob("level.json.replaced-*"))) == 1 + 2 * 2
    client, found3 = runs(opts.tracking_uri, "rewind_ablation")
    assert len(found3) == len(found) + 3  # a new sweep run and its 2 trial runs; the old ones untouched


def images(client, run_id):
    return sorted(a.path for a in client.list_artifacts(run_id, "images") if a.path.endswith(".png"))


def assert_ui_compares(client, exp, parent, children):
    """What the MLflow UI shows: resolved params, system tags, an image per level, PSNR against sparsity,
    the experiment's description, true durations, and the sweep run's summary metrics."""
    from lipsweep.core.versions import git_commit

    experiment = client.get_experiment(parent.info.experiment_id)
    assert experiment.tags["mlflow.note.content"].startswith(exp.paper)
    for r in [parent, *children]:
        tags = r.data.tags
        assert tags["mlflow.source.name"] == "lipsweep run rewind_ablation --profile smoke" and tags["mlflow.user"]
        assert json.loads(tags["lipsweep.code"])["fit"] == 1 and tags.get("mlflow.source.git.commit") == git_commit()[0]
    here = current(1).label  # every level computed on this machine's CPU, one thread (resources.cpu: 1)
    for r in children:
        tags = r.data.tags
        assert tags["lipsweep.platform"] == here and tags["lipsweep.platforms"] == "1" and tags["lipsweep.node"]
        assert not [k for k in tags if ".level_" in k]  # one platform, one node: said once, not per level
        params = r.data.params
        assert "None" not in params.values() and params["ema"] == "0.99" and params["backtrack"] == "True"
        assert params["iters"] == str(exp.trials[0].chain().run.fit.iters) and params["size"] == "64"
        assert "generator" not in params and "source_image" not in params  # fields its kind ignores
        assert [p.split("/")[-1].split("+")[:3] for p in images(client, r.info.run_id)] == [
            ["restored", "step", str(level)] for level in range(3)]
        assert not [k for k in r.data.metrics if k.startswith("vs_sparsity_permille/")]  # X axis = metric sparsity
        assert sorted(m.step for m in client.get_metric_history(r.info.run_id, "psnr_ema")) == [0, 1, 2]
        assert parent.info.start_time <= r.info.start_time < r.info.end_time
    summary = client.get_run(parent.info.run_id).data.metrics
    assert summary["trials_finished"] == 2 and summary["trials_failed"] == 0
    assert {k for k in summary if k.startswith("within_delta/")} == {
        f"within_delta/{g}/{m}" for g in ("all", "rewind_0.0", "rewind_0.1") for m in ("sparsity", "psnr_ema")}
    assert round(summary["within_delta/all/sparsity"], 2) in (0.0, 0.1, 0.18, 0.2, 0.28, 0.36)


def test_the_progress_bar_moves_within_a_level_with_elapsed_time_and_eta(ray_local, tmp_path, capfd):
    exp = load(str(small_sweep(tmp_path, levels=1, iters=600)), "smoke")  # levels of seconds: polls are 1 s apart
    exp = replace(exp, trials=exp.trials[:1], labels=exp.labels[:1])
    run_sweep(exp, replace(options(tmp_path), quiet=False, progress_every_s=0.5))
    lines = [ln for ln in capfd.readouterr().err.splitlines() if ln.startswith("rewind_ablation [smoke]:")]
    done = [float(re.search(r"\| ([0-9.]+)/2 levels \[", ln).group(1)) for ln in lines]
    assert any(0 < d < 1 for d in done) and any(1 < d < 2 for d in done), "\n".join(lines)  # inside levels 0, 1
    assert done == sorted(done) and done[-1] == 2.0 and "<" in lines[-1] and "trials 1/1 done" in lines[-1]


def test_a_failing_trial_is_retried_then_failed_without_losing_the_others(ray_local, tmp_path, image_file,
                                                                         monkeypatch):
    doomed = image_file(64, 64, "RGB", "doomed.png")
    spec = yaml.safe_load(open(load("rewind_ablation", "smoke").file).read())
    spec["axes"] = {"image": ["Set5/baby", str(doomed)]}
    spec["profiles"]["smoke"]["axes"] = {}
    spec["profiles"]["smoke"]["base"]["levels"] = 1
    f = tmp_path / "rewind_ablation.yaml"
    f.write_text(yaml.safe_dump(spec))
    exp = load(str(f), "smoke")
    doomed.unlink()  # vanishes after validation: the trial raises in its worker, every retry
    monkeypatch.setattr("lipsweep.sweep.tune.preflight", lambda exp, opts: None)  # (it would catch it before Ray)
    opts = options(tmp_path, max_failures=1)
    summary = run_sweep(exp, opts)
    bad = next(t.key for t in exp.trials if t.image == str(doomed))
    assert summary.failed == [bad] and len(summary.finished) == 1
    assert summary.failed_levels[bad].endswith("levels 0..1 missing (no level reported)") and summary.status == "FAILED"
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
    args = [sys.executable, "-m", "lipsweep.cli.main", "run", str(f), "--profile", "smoke", "--store", "store",
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
    import optuna

    exp = load("stop_threshold", "smoke")
    opts = replace(options(tmp_path), study_storage=f"sqlite:///{tmp_path / 'optuna.db'}")
    summary = run_sweep(exp, opts)
    assert len(summary.finished) == 4 and not summary.failed
    (stored,) = optuna.get_all_study_summaries(opts.study_storage)  # the study optuna-dashboard reads
    study = optuna.load_study(study_name=stored.study_name, storage=opts.study_storage)
    assert len([t for t in study.trials if t.state.name == "COMPLETE"]) == 4
    assert study.user_attrs["objective"] == {"delta": exp.delta, "penalty": 1.0, "metric": "psnr_ema", "multi": False}
    fits = fit_keys(opts.store)
    assert len(fits) == 1 + 3 and len(set(fits)) == len(fits)  # the chain is computed once for all 4 trials
    client, found = runs(opts.tracking_uri, "stop_threshold")
    children = [r for r in found if r.data.tags.get("lipsweep.role") == "trial"]
    assert len(children) == 4
    for r in children:
        assert {"k", "tolerance", "offset", "smooth"} <= set(r.data.params)
        assert 0 <= r.data.metrics["sparsity"] <= 0.5 and "objective" in r.data.metrics


def small_sweep(tmp_path, levels=4, iters=60, **top) -> "Path":
    spec = yaml.safe_load(open(load("rewind_ablation", "smoke").file).read())
    spec["profiles"]["smoke"]["base"] = {"size": 64, "width": 8, "iters": iters, "levels": levels}
    spec["axes"] = {"rewind": [0.0, 0.1], "seed": [0, 1]}
    spec["profiles"]["smoke"]["axes"] = {}
    spec.update(top)
    f = tmp_path / "rewind_ablation.yaml"
    f.write_text(yaml.safe_dump(spec))
    return f


def test_a_sweep_cut_by_its_time_budget_says_so_and_marks_its_runs_killed(ray_local, tmp_path):
    exp = load(str(small_sweep(tmp_path, levels=2, iters=40, time_budget_s=1)), "smoke")
    opts = options(tmp_path)
    summary = run_sweep(exp, opts)
    assert summary.cut == "time_budget_s 1 s reached" and summary.status == "KILLED"
    assert len(summary.incomplete) == 4 and not summary.finished and not summary.failed
    assert all("missing" in line for line in summary.incomplete.values())
    client, found = runs(opts.tracking_uri, "rewind_ablation")
    started = [r for r in found if r.data.tags["lipsweep.role"] == "trial"]  # a run is made when its trial starts
    assert sorted(r.info.status for r in found) == ["KILLED"] * (1 + len(started))  # none says "finished"
    parent = client.get_run(summary.parent_run_id).data.metrics
    assert parent["trials_incomplete"] == 4 and parent["trials_finished"] == 0
    again = run_sweep(replace(exp, time_budget_s=None), opts)  # the rerun the CLI suggests: same sweep key
    assert again.parent_run_id == summary.parent_run_id and len(again.finished) == 4 and not again.incomplete
    client, found = runs(opts.tracking_uri, "rewind_ablation")
    assert sorted(r.info.status for r in found) == ["FINISHED"] * 5


def test_ctrl_c_ends_the_sweep_non_zero_with_what_is_missing_and_the_resume_command(tmp_path):
    args = [sys.executable, "-m", "lipsweep.cli.main", "run", str(small_sweep(tmp_path)), "--profile", "smoke",
            "--store", "store", "--storage", str(tmp_path / "tune"), "--tracking-uri", "sqlite:///mlflow.db",
            "--quiet", "--no-analysis"]
    driver = subprocess.Popen(args, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 240
    while time.time() < deadline and len(TrunkStore(tmp_path / "store").fit_log()) < 3 and driver.poll() is None:
        time.sleep(0.2)
    driver.send_signal(signal.SIGINT)
    out, _ = driver.communicate(timeout=120)
    assert driver.returncode == 3, out[-3000:]
    assert "(interrupted)" in out and "incomplete: rewind=" in out and " --resume" in out
    resume = next(line for line in out.splitlines() if "resume with" in line).split("resume with", 1)[1].split()
    assert resume[:3] == ["lipsweep", "run", str(tmp_path / "rewind_ablation.yaml")]
    assert resume[3:] == ["--profile", "smoke", "--store", "store", "--storage", str(tmp_path / "tune"),
                          "--tracking-uri", "sqlite:///mlflow.db", "--resume"]  # the killed-driver test runs it
    client, found = runs(f"sqlite:///{tmp_path / 'mlflow.db'}", "rewind_ablation")
    assert "FINISHED" not in {r.info.status for r in found if r.data.tags.get("lipsweep.role") == "sweep"}


def test_a_second_driver_on_the_same_sweep_is_refused_in_one_line(tmp_path):
    exp = load("rewind_ablation", "smoke")
    opts = options(tmp_path)
    from lipsweep.sweep.options import sweep_key

    with TrunkStore(opts.store).lock(f"driver-{sweep_key(exp)}"):
        with pytest.raises(ConfigError, match=r"^sweep: another driver is running this sweep .* --resume$"):
            run_sweep(exp, opts)


def test_a_sweep_of_trials_another_sweep_ran_gets_its_own_runs_and_report_from_the_store(ray_local, tmp_path,
                                                                                         monkeypatch):
    from lipsweep.cli.sweep import run_analysis

    opts = options(tmp_path)
    first = run_sweep(load("rewind_ablation", "smoke"), opts)
    fits = fit_keys(opts.store)
    subset = load("rewind_ablation", "smoke", {"rewind": 0.0})  # one of the first sweep's two trials
    second = run_sweep(subset, opts)
    assert second.parent_run_id != first.parent_run_id and second.finished == [subset.trials[0].key]
    assert fit_keys(opts.store) == fits  # its levels came from the store
    client, found = runs(opts.tracking_uri, "rewind_ablation")
    mine = [r for r in found if r.data.tags.get("mlflow.parentRunId") == second.parent_run_id]
    assert len(mine) == 1 and mine[0].info.status == "FINISHED"
    assert sorted(m.step for m in client.get_metric_history(mine[0].info.run_id, "sparsity")) == [0, 1, 2]
    assert len([r for r in found if r.data.tags.get("mlflow.parentRunId") == first.parent_run_id]) == 2
    monkeypatch.chdir(tmp_path)
    reports = {run_analysis("rewind_ablation", opts.tracking_uri, None, "smoke", parent=s.parent_run_id)
               for s in (first, second)}
    assert len(reports) == 2 and all(p.is_file() for p in reports)
    assert "1 trial runs" in next(p for p in reports if second.sweep_key[:8] in str(p)).read_text()


def test_a_cluster_without_a_node_for_the_trial_is_waited_for_then_refused(ray_local):
    from lipsweep.sweep.tune import wait_for_resources

    wait_for_resources({"cpu": 1, "gpu": 0}, timeout_s=0.1)  # this machine's node holds it: no wait
    start = time.time()
    with pytest.raises(ConfigError, match=r"^resources: no node of the cluster offers cpu: 1, gpu: 4 per trial "
                                          r"after 2 s \(the cluster has cpu: \d+, gpu: 0 in all\)"):
        wait_for_resources({"cpu": 1, "gpu": 4}, timeout_s=2, quiet=True)
    assert 2 <= time.time() - start < 30


def test_two_drivers_started_together_log_every_level_once(tmp_path):
    """Two real drivers on one store and one SQLite MLflow: one runs, the other is refused in one line."""
    args = [sys.executable, "-m", "lipsweep.cli.main", "run", str(small_sweep(tmp_path, levels=2, iters=30)),
            "--profile", "smoke", "--store", "store", "--storage", str(tmp_path / "tune"), "--tracking-uri",
            "sqlite:///mlflow.db", "--quiet", "--no-analysis"]
    drivers = [subprocess.Popen(args, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
               for _ in range(2)]
    outs = [d.communicate(timeout=400) for d in drivers]
    codes = sorted(d.returncode for d in drivers)
    assert codes == [0, 2], outs
    refused = next(err for d, (_, err) in zip(drivers, outs) if d.returncode == 2)
    assert "error: sweep: another driver is running this sweep" in refused and "Traceback" not in refused
    client, found = runs(f"sqlite:///{tmp_path / 'mlflow.db'}", "rewind_ablation")
    children = [r for r in found if r.data.tags.get("lipsweep.role") == "trial"]
    assert len(children) == 4
    for r in children:
        assert sorted(m.step for m in client.get_metric_history(r.info.run_id, "sparsity")) == [0, 1, 2]


def test_a_resumed_sweep_gets_its_time_budget_afresh():
    """Tune's own budget counts the time a stopped sweep stood still: resumed later, it stopped at once."""
    import pickle

    from lipsweep.sweep.tune import SessionBudget

    budget = SessionBudget(60)
    assert not budget.stop_all()
    budget.start -= 3600  # an hour ago: this session's budget is spent
    assert budget.stop_all()
    restored = pickle.loads(pickle.dumps(budget))  # what Tuner.restore does with the run config
    assert not restored.stop_all() and restored.start > budget.start + 3000


def test_a_node_local_store_is_refused_from_the_cluster_file_before_any_worker_is_up(ray_local, tmp_path,
                                                                                      monkeypatch):
    from lipsweep.sweep.tune import check_cluster_paths

    paths = {"storage": str(tmp_path / "tune"), "store": str(tmp_path / "store")}
    monkeypatch.setenv("HOME", str(tmp_path))
    check_cluster_paths(paths, (), attached=True)  # one node and no cluster file: a single machine
    (tmp_path / "ray_bootstrap_config.yaml").write_text(Path("cluster.yaml").read_text())  # what `ray up` leaves
    check_cluster_paths(paths, (), attached=False)  # a local Ray is never the cluster's
    with pytest.raises(ConfigError) as err:
        check_cluster_paths(paths, (), attached=True)
    assert err.value.field == "storage" and "can grow to 11 nodes" in err.value.message
    check_cluster_paths(paths, (str(tmp_path),), attached=True)  # declared shared: accepted
