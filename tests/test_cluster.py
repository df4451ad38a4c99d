"""Multi-node: a real Ray head + two workers (`ray start`) and a real `mlflow server`, all on loopback.

Drivers run as separate processes (`lipsweep run --address`), as a user's would; faults are injected by
PID: a worker node killed, the MLflow server stopped for 20 s, the driver killed and resumed.
"""

import json
import signal
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections import Counter

import pytest
import yaml
from loopback_cluster import LoopbackCluster
from mlflow.tracking import MlflowClient

from lipsweep.experiments.spec import load
from lipsweep.lottery.store import TrunkStore

pytestmark = pytest.mark.timeout(900)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    c = LoopbackCluster(tmp_path_factory.mktemp("cluster"))
    try:
        yield c.start()
    finally:
        c.shutdown()


def experiment(c: LoopbackCluster, name: str, seeds: list[int], levels: int = 3, iters: int = 60):
    """A smoke variant of rewind_ablation with its own seeds (so its own trials, keys and MLflow runs)."""
    spec = yaml.safe_load(open(load("rewind_ablation", "smoke").file).read())
    spec["name"] = name
    spec["axes"] = {"seed": seeds}
    spec["profiles"]["smoke"] = {"base": {"size": 64, "width": 8, "iters": iters, "levels": levels}}
    path = c.root / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def driver(c: LoopbackCluster, spec, *extra: str, store: str | None = None) -> list[str]:
    return [sys.executable, "-m", "lipsweep.cli.main", "run", str(spec), "--profile", "smoke", "--address", c.address,
            "--tracking-uri", c.tracking_uri, "--store", store or str(c.root / "store"),
            "--storage", str(c.root / "tune"), "--shared-path", str(c.root), "--quiet", "--no-analysis", *extra]


def start(c, args) -> subprocess.Popen:
    return subprocess.Popen(args, env=c.env, cwd=c.root, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)


def finish(proc: subprocess.Popen, timeout: float = 400) -> str:
    out, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, out[-3000:]
    return out


def wait_for(predicate, timeout: float = 180, what: str = "") -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        time.sleep(0.3)
    raise TimeoutError(what)


def fits(c) -> list[tuple]:
    return [tuple(sorted((k, str(v)) for k, v in e.items() if k not in ("seconds", "pid")))
            for e in TrunkStore(c.root / "store").fit_log()]


def children(c, name):
    client = MlflowClient(c.tracking_uri)
    exp = client.get_experiment_by_name(f"lipsweep/{name}")
    runs = client.search_runs([exp.experiment_id]) if exp else []
    return client, [r for r in runs if r.data.tags.get("lipsweep.role") == "trial"]


def assert_complete(c, name: str, n_trials: int, levels: int) -> None:
    client, runs = children(c, name)
    assert len(runs) == n_trials, [r.info.run_name for r in runs]
    for r in runs:
        assert r.info.status == "FINISHED"
        steps = [m.step for m in client.get_metric_history(r.info.run_id, "psnr_final")]
        assert sorted(steps) == list(range(levels + 1)), steps  # every level exactly once
    keys = fits(c)
    assert len(keys) == len(set(keys)), Counter(keys).most_common(2)  # no level fitted twice


def test_cluster_files_validate_with_rays_own_checks():
    from ray.autoscaler._private.util import prepare_config, validate_config

    for path in ("cluster.yaml", "cluster/onprem.yaml", "cluster/gcp.yaml"):
        validate_config(prepare_config(yaml.safe_load(open(path))))


@pytest.mark.cluster
def test_trials_spread_over_two_nodes_and_land_in_mlflow_once(cluster):
    spec = experiment(cluster, "spread", seeds=[0, 1, 2, 3])
    finish(start(cluster, driver(cluster, spec)))
    assert_complete(cluster, "spread", 4, 3)
    _, runs = children(cluster, "spread")
    nodes = {v for r in runs for k, v in r.data.tags.items() if k == "lipsweep.node" or k.startswith("lipsweep.node.")}
    assert len(nodes) >= 2, nodes
    assert_the_ui_compares_over_rest(cluster, "spread", levels=3)


def rest(c, endpoint: str, **query):
    """One GET of MLflow's REST API (what the UI's pages fetch), parsed."""
    url = f"{c.tracking_uri}/api/2.0/mlflow/{endpoint}?{urllib.parse.urlencode(query)}"
    with urllib.request.urlopen(url, timeout=30) as r:
        return json.loads(r.read())


def assert_the_ui_compares_over_rest(c, name: str, levels: int) -> None:
    """The run page (resolved params, system tags), the image comparison (one ``restored`` image per level
    step) and the PSNR-vs-sparsity chart (steps = sparsity in per-mille) read from the server's REST API."""
    exp = rest(c, "experiments/get-by-name", experiment_name=f"lipsweep/{name}")["experiment"]
    assert any(t["key"] == "mlflow.note.content" and "Fig. 9" in t["value"] for t in exp.get("tags", []))
    for run in children(c, name)[1]:
        page = rest(c, "runs/get", run_id=run.info.run_id)["run"]
        params = {p["key"]: p["value"] for p in page["data"]["params"]}
        tags = {t["key"]: t["value"] for t in page["data"]["tags"]}
        assert "None" not in params.values() and params["iters"] == "60" and params["ema"] == "0.99"
        assert tags["mlflow.source.name"].startswith("lipsweep run ") and "lipsweep.code" in tags
        files = rest(c, "artifacts/list", run_id=run.info.run_id, path="images").get("files", [])
        steps = sorted(int(f["path"].split("+")[2]) for f in files if f["path"].endswith(".png"))
        assert steps == list(range(levels + 1)), files
        curve = rest(c, "metrics/get-history", run_id=run.info.run_id,
                     metric_key="psnr_ema")["metrics"]
        assert sorted(m["step"] for m in curve) == list(range(levels + 1))


@pytest.mark.cluster
def test_node_local_storage_is_refused_before_any_trial(cluster, tmp_path):
    spec = experiment(cluster, "refused", seeds=[0])
    args = driver(cluster, spec, store=str(tmp_path / "local-store"))
    args.remove("--shared-path")
    args.remove(str(cluster.root))
    proc = subprocess.run(args, env=cluster.env, cwd=cluster.root, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "is node-local" in proc.stderr and "the cluster has 3 nodes" in proc.stderr
    assert not (tmp_path / "local-store").exists()
    assert children(cluster, "refused")[1] == []


@pytest.mark.cluster
def test_killing_a_worker_node_mid_sweep_loses_nothing(cluster):
    spec = experiment(cluster, "nodefail", seeds=[10, 11, 12, 13], levels=4, iters=80)
    before = len(fits(cluster))
    proc = start(cluster, driver(cluster, spec))
    wait_for(lambda: len(fits(cluster)) >= before + 3, what="first fits")
    cluster.stop("worker1", signal.SIGKILL)
    try:
        finish(proc)
        assert_complete(cluster, "nodefail", 4, 4)
    finally:
        cluster.start_worker(1)
        cluster.wait_nodes(3)


@pytest.mark.cluster
def test_mlflow_server_down_for_20_s_loses_no_metric(cluster):
    spec = experiment(cluster, "outage", seeds=[20, 21], levels=5, iters=80)
    args = driver(cluster, spec)
    args.remove("--quiet")  # the buffering announces itself
    proc = start(cluster, args)
    wait_for(lambda: len(children(cluster, "outage")[1]) == 2 and any(
        r.data.metrics for r in children(cluster, "outage")[1]), what="first metrics")
    cluster.stop("mlflow")
    time.sleep(20)
    cluster.start_mlflow()
    out = finish(proc)
    assert_complete(cluster, "outage", 2, 5)
    assert "MLflow unavailable" in out  # the driver did hit the outage, and buffered


@pytest.mark.cluster
def test_killed_driver_resumes_against_the_same_cluster_without_duplicates(cluster):
    spec = experiment(cluster, "resume", seeds=[30, 31, 32], levels=4, iters=80)
    before = len(fits(cluster))
    proc = start(cluster, driver(cluster, spec))
    wait_for(lambda: len(fits(cluster)) >= before + 3, what="first fits")
    proc.send_signal(signal.SIGKILL)
    proc.wait(30)
    finish(start(cluster, driver(cluster, spec, "--resume")))
    assert_complete(cluster, "resume", 3, 4)
