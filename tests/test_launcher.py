"""The launcher flow and the cluster files: a fake-multinode Ray cluster on this machine, the cluster files'
planned sizes and settings, and the cost figures docs/cluster.md quotes.

The flow test is Ray's own way of testing the autoscaler locally ("Testing Autoscaling Locally"): the
``fake_multinode`` provider, whose worker nodes are real raylets on this machine launched by the real
autoscaler. Ray's docs start it with ``RAY_FAKE_CLUSTER=1 ray start --head --autoscaling-config=FILE``; ``ray
up`` / ``ray down`` cannot drive this provider (Ray 2.60's wheel lacks the provider's defaults file, and its
head exists only inside ``ray start``), so the head's ``ray start`` stands in for ``ray up``, and stopping that
process (then its process group, where the fake workers live) for ``ray down``.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest
import yaml
from loopback_cluster import free_port
from mlflow.tracking import MlflowClient

from lipsweep.cli.main import main
from lipsweep.core.errors import ConfigError
from lipsweep.sweep.clusterfile import (
    bootstrap_config_path,
    load_cluster_config,
    planned_nodes,
)

ROOT = Path(__file__).resolve().parents[1]
CLOUD_FILES = ("cluster.yaml", "cluster/gcp.yaml", "cluster/onprem.yaml")
FAKE_FILE = ROOT / "cluster" / "fake_multinode.yaml"
FAKE_HEAD_ID = "f" * 51 + "00000"  # the id Ray's fake provider gives the head; workers count up from 00001
NEVER_SHIPPED = {".venv/", ".lipsweep/", "mlflow.db", "mlruns/", "/runs/", "__pycache__/", "*.egg-info/"}


def _bin(name: str) -> str:
    return str(Path(sys.executable).with_name(name))


# --- lipsweep.sweep.clusterfile -------------------------------------------------------------------------------


@pytest.mark.parametrize("path, nodes", [("cluster.yaml", 11), ("cluster/gcp.yaml", 11),
                                         ("cluster/onprem.yaml", 3), ("cluster/fake_multinode.yaml", 3)])
def test_planned_nodes_of_the_shipped_cluster_files(path, nodes):
    assert planned_nodes(load_cluster_config(ROOT / path)) == nodes


def test_planned_nodes_follows_rays_caps():
    types = {"head": {"max_workers": 0}, "a": {"max_workers": 8}, "b": {"max_workers": 4}, "c": {}}
    assert planned_nodes({"available_node_types": types, "head_node_type": "head"}) == 13
    assert planned_nodes({"available_node_types": types, "head_node_type": "head", "max_workers": 5}) == 6
    assert planned_nodes({"available_node_types": {"head": {}, "c": {}}, "head_node_type": "head",
                          "max_workers": 3}) == 4  # a type without max_workers: the top-level one
    assert planned_nodes({"max_workers": 4}) == 5  # legacy file: no node types
    assert planned_nodes({"provider": {"type": "local", "head_ip": "h", "worker_ips": []}}) == 1
    assert planned_nodes({}) == 1


def test_load_cluster_config_refuses_what_is_not_a_cluster_file(tmp_path):
    (tmp_path / "list.yaml").write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="not a Ray cluster file .* got list"):
        load_cluster_config(tmp_path / "list.yaml")
    with pytest.raises(ConfigError, match="cannot read"):
        load_cluster_config(tmp_path / "missing.yaml")


def test_bootstrap_config_path_is_the_file_ray_up_writes_on_the_head(tmp_path):
    assert bootstrap_config_path(tmp_path) is None
    (tmp_path / "ray_bootstrap_config.yaml").write_text("max_workers: 2\n")
    assert bootstrap_config_path(tmp_path) == tmp_path / "ray_bootstrap_config.yaml"
    assert planned_nodes(load_cluster_config(bootstrap_config_path(tmp_path))) == 3


# --- the cluster files ------------------------------------------------------------------------------------


def test_fake_cluster_file_validates_as_the_monitor_reads_it():
    """The monitor validates the file as is (no defaults filled in: ``prepare_config`` needs a defaults file
    Ray's wheel does not ship for this provider)."""
    from ray.autoscaler._private.util import validate_config

    config = yaml.safe_load(FAKE_FILE.read_text())
    validate_config(config)
    assert config["provider"]["type"] == "fake_multinode"
    assert config["available_node_types"]["ray.worker.cpu"]["min_workers"] == 0


@pytest.mark.parametrize("path", CLOUD_FILES)
def test_cluster_files_never_ship_venvs_or_stores(path):
    config = load_cluster_config(ROOT / path)
    assert NEVER_SHIPPED <= set(config["rsync_exclude"]), NEVER_SHIPPED - set(config["rsync_exclude"])
    assert config["rsync_filter"] == [".gitignore"]


@pytest.mark.parametrize("path", ["cluster.yaml", "cluster/gcp.yaml"])
def test_cloud_nodes_install_torch_once_per_image_and_log_to_a_store_outliving_them(path):
    config = load_cluster_config(ROOT / path)
    boot = [c for key in ("setup_commands", "worker_setup_commands", "head_setup_commands") for c in config.get(key, [])]
    installs = [c for c in boot if "pip install" in c]
    assert len(installs) == 1 and "--no-deps" in installs[0], installs
    server = next(c for c in config["head_start_ray_commands"] if "mlflow server" in c)
    backend = re.search(r"--backend-store-uri (\S+)", server).group(1)
    assert not re.search(r"sqlite|127\.0\.0\.1|localhost", backend), backend  # not the head's own disk
    assert (ROOT / "cluster" / "Dockerfile").read_text().count(config["docker"]["image"].split(":")[-1]) == 2


def test_aws_head_keeps_rays_profile_and_workers_get_their_own():
    types = load_cluster_config(ROOT / "cluster.yaml")["available_node_types"]
    assert "IamInstanceProfile" not in types["head"]["node_config"]  # Ray's ray-autoscaler-v1: EC2 + S3
    assert types["gpu_worker"]["node_config"]["IamInstanceProfile"]["Arn"].endswith("instance-profile/lipsweep-worker")


def test_gcp_gpu_workers_are_set_up_as_in_rays_gpu_example():
    worker = load_cluster_config(ROOT / "cluster/gcp.yaml")["available_node_types"]["gpu_worker"]
    node = worker["node_config"]
    assert node["guestAccelerators"] == [{"acceleratorType": "nvidia-tesla-t4", "acceleratorCount": 1}]
    assert {"key": "install-nvidia-driver", "value": "True"} in node["metadata"]["items"]
    assert {"onHostMaintenance": "TERMINATE"} in node["scheduling"]
    assert "deeplearning-platform-release" in node["disks"][0]["initializeParams"]["sourceImage"]
    assert "nvidia-smi" in worker["initialization_commands"][-1]


def test_onprem_runs_everything_from_a_venv():
    """PEP 668 systems refuse pip into the system Python: every pip, ray and mlflow is the venv's."""
    config = load_cluster_config(ROOT / "cluster/onprem.yaml")
    commands = [c for key, value in config.items() if key.endswith("_commands") for c in value]
    tools = re.findall(r"(\S*)\b(pip|ray|mlflow) (install|start|stop|server)", "\n".join(commands))
    assert len(tools) == 6 and {prefix for prefix, _, _ in tools} == {"~/lipsweep-venv/bin/"}, tools
    assert any("python3 -m venv ~/lipsweep-venv" in c for c in commands)


# --- docs/cluster.md's figures ------------------------------------------------------------------------------


def test_cluster_doc_quotes_what_lipsweep_show_computes(tmp_path, capsys):
    """The doc's time and cost figures are ``lipsweep show rewind_ablation --profile paper`` on an empty store:
    its totals verbatim, and the 10-GPU example (work, longest trial, wall-clock, cost) recomputed from the same
    plan; neither can drift from the code."""
    from lipsweep.experiments.plan import plan, trial_gpu_seconds, wall_clock
    from lipsweep.experiments.spec import load
    from lipsweep.fitting import calibration
    from lipsweep.lottery.store import TrunkStore

    store = tmp_path / "store"
    assert main(["show", "rewind_ablation", "--profile", "paper", "--store", str(store)]) == 0
    totals = "\n".join(capsys.readouterr().out.strip().splitlines()[-4:])
    doc = (ROOT / "docs" / "cluster.md").read_text()
    assert f"```\n{totals}\n```" in doc, totals
    exp = load("rewind_ablation", "paper")
    plans = plan(exp, TrunkStore(store))
    gpu_hours = sum(map(trial_gpu_seconds, plans)) / 3600
    longest = max(plans, key=trial_gpu_seconds)
    ten = wall_clock(list(map(trial_gpu_seconds, plans)), 10, exp.resources["gpu"])
    assert f"~{gpu_hours:.2f} GPU hours" in totals and f"10 GPUs ~{ten.hours:.1f} hours ({ten.limit})" in totals
    assert f"{gpu_hours:.2f} GPU-hours / 10 GPUs = {gpu_hours / 10:.1f} hours" in doc
    assert (f"{longest.fits_needed} fits of {longest.iters} iterations, {trial_gpu_seconds(longest) / 3600:.1f} "
            f"GPU-hours on a whole GPU, {4 * trial_gpu_seconds(longest) / 3600:.1f} hours at a quarter of one") in doc
    assert f"10 GPU workers (4 trials each, 40 at a time): **{ten.hours:.1f} hours**, set by the {ten.limit}\n" in doc
    assert f"10 `g5.xlarge` for {ten.hours:.1f} hours is {10 * ten.hours:.0f} instance-hours" in doc
    assert f"about ${10 * ten.hours * 1.006:,.0f}" in doc and f"$0.384/h: about ${0.384 * ten.hours:.0f})" in doc
    cpu = json.loads(calibration.TABLE.read_text())["devices"]["cpu"]
    paper_step = next(e["it_s"] for e in cpu["entries"] if (e["width"], e["pixels"]) == (128, 512 * 512))
    assert f"(width 128 at 512 px) measured {paper_step:.3f} it/s" in doc
    assert f"errs by {cpu['model']['loo_rms_error']:.0%} rms" in doc
    enough = next(n for n in range(1, 200) if wall_clock(list(map(trial_gpu_seconds, plans)), n, 0.25).limit
                  == "longest trial")
    assert f"until the longest trial sets it, from {enough} GPUs on: {4 * trial_gpu_seconds(longest) / 3600:.1f} hours" in doc


# --- the launcher flow on a fake multi-node cluster ---------------------------------------------------------


class FlowLog:
    """Every command, its exit status, time and output, in one file (also $LIPSWEEP_LAUNCHER_LOG if set)."""

    def __init__(self, path: Path):
        extra = os.environ.get("LIPSWEEP_LAUNCHER_LOG")
        self.paths = [path] + ([Path(extra)] if extra else [])
        self.start = time.time()
        for p in self.paths:
            p.write_text("")

    def write(self, text: str) -> None:
        for p in self.paths:
            with open(p, "a") as f:
                f.write(f"[{time.time() - self.start:6.1f}s] {text.rstrip()}\n")

    def run(self, args: list[str], env: dict, timeout: float) -> subprocess.CompletedProcess:
        self.write("$ " + shlex.join(args))
        t = time.time()
        proc = subprocess.run(args, env=env, capture_output=True, text=True, timeout=timeout)
        self.write(f"(exit {proc.returncode} in {time.time() - t:.1f} s)\n{proc.stdout}{proc.stderr}")
        return proc


class FakeCluster:
    """cluster/fake_multinode.yaml on free ports, with its own Ray temp dir (short: Ray's socket paths
    must stay under 108 bytes), so nothing it starts or stops touches another Ray on this machine."""

    def __init__(self, root: Path, log: FlowLog):
        self.root, self.log = root, log
        self.temp = Path(tempfile.mkdtemp(prefix="lsfk-"))
        self.gcs, self.dashboard = free_port(), free_port()
        self.address = f"http://127.0.0.1:{self.dashboard}"
        self.token = secrets.token_hex(32)  # its own, so the test needs nothing from ~/.ray
        self.env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_AUTH_TOKEN_PATH")}
        self.env.update(RAY_FAKE_CLUSTER="1", AUTOSCALER_UPDATE_INTERVAL_S="1", RAY_USAGE_STATS_ENABLED="0",
                        RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=self.token)
        self.head: subprocess.Popen | None = None

    def config_file(self) -> Path:
        import ray

        config = yaml.safe_load(FAKE_FILE.read_text())
        config["provider"]["gcs_address"] = f"{ray.util.get_node_ip_address()}:{self.gcs}"
        path = self.root / "fake_multinode.yaml"
        path.write_text(yaml.safe_dump(config))
        return path

    def up(self, timeout: float = 150, tries: int = 2) -> None:
        """The head, once more if it exits while starting: on a loaded 2-core machine a Ray process can miss
        its own start-up deadline (a CI run saw the head's raylet take over 60 s to register, and ``ray start
        --block`` then exits). The runtime-env agent gets a fixed port: with a self-assigned one, Ray's client
        server waits (60 s at most) for the head's node record to learn it, and that wait is what gave up."""
        for attempt in range(1, tries + 1):
            if self._start_head(timeout) or attempt == tries:
                break
            self.log.write(f"head exited while starting (try {attempt} of {tries}):\n"
                           + (self.root / "head.log").read_text()[-3000:])
            self.down()
        assert self._head_alive(), (self.root / "head.log").read_text()[-3000:]
        self.log.write(f"head up: GCS port {self.gcs}, dashboard {self.address}, Ray temp dir {self.temp}")

    def _start_head(self, timeout: float) -> bool:
        """True once the head node is alive; False if its ``ray start`` exited or ``timeout`` passed first."""
        args = [_bin("ray"), "start", "--head", "--block", f"--port={self.gcs}", "--num-cpus=0", "--num-gpus=0",
                f"--autoscaling-config={self.config_file()}", "--dashboard-host=127.0.0.1",
                f"--dashboard-port={self.dashboard}", f"--dashboard-agent-listen-port={free_port()}",
                f"--ray-client-server-port={free_port()}", f"--runtime-env-agent-port={free_port()}",
                "--min-worker-port=0", "--max-worker-port=0",
                "--object-store-memory=100000000", f"--temp-dir={self.temp}", "--disable-usage-stats"]
        self.log.write("$ RAY_FAKE_CLUSTER=1 AUTOSCALER_UPDATE_INTERVAL_S=1 " + shlex.join(args) + " &")
        with open(self.root / "head.log", "w") as out:
            self.head = subprocess.Popen(args, env=self.env, stdout=out, stderr=subprocess.STDOUT,
                                         start_new_session=True)
        deadline = time.time() + timeout
        while not self._head_alive():
            if self.head.poll() is not None or time.time() > deadline:
                return False
            time.sleep(0.5)
        return True

    def _head_alive(self) -> bool:
        try:
            return any(n["state"] == "ALIVE" for n in self.nodes(quiet=True))
        except OSError:  # the dashboard is not listening yet
            return False

    def api(self, path: str) -> dict:
        """The dashboard's REST API (what `ray list` and `ray job status` call, without their 3 s start-up)."""
        request = urllib.request.Request(self.address + path, headers={"Authorization": f"Bearer {self.token}"})
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.loads(response.read())

    def nodes(self, quiet: bool = False) -> list[dict]:
        """Every node the cluster has had, alive or dead (Ray's state API keeps removed nodes)."""
        nodes = self.api("/api/v0/nodes?limit=100")["data"]["result"]["result"]
        if not quiet:
            self.log.write("nodes: " + "; ".join(f"{n['node_id'][-5:]} {'head' if n['is_head_node'] else 'worker'} "
                                                  f"{n['state']} {n['resources_total']}" for n in nodes))
        return nodes

    def monitor_log(self) -> str:
        logs = sorted(self.temp.glob("session_*/logs/monitor.log"))
        return logs[-1].read_text() if logs else ""

    def processes(self) -> list[str]:
        """This cluster's processes still alive: in the head's process group, or naming its temp dir or
        the test's directory (the job's driver runs in its own session)."""
        found = []
        for proc in Path("/proc").glob("[0-9]*"):
            try:
                cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                fields = (proc / "stat").read_text().rsplit(")", 1)[1].split()  # state, ppid, pgrp, ...
                state, pgid = fields[0], fields[2]
            except (OSError, IndexError, ValueError):
                continue
            mine = self.head is not None and int(pgid) == self.head.pid
            if state != "Z" and (mine or str(self.temp) in cmd or str(self.root) in cmd):
                found.append(f"{proc.name} {cmd[:120]}")
        return found

    def down(self, timeout: float = 20) -> None:
        """Ray's own shutdown of the head (SIGTERM to its ``ray start``), then the process group: the fake
        workers are raylets the monitor started there and nothing else stops."""
        if self.head is None:
            return
        self.log.write(f"$ kill -TERM {self.head.pid}   # ray start --block: stops the head's processes")
        self.head.terminate()
        try:
            self.head.wait(timeout)
        except subprocess.TimeoutExpired:
            pass
        self.log.write(f"$ kill -KILL -- -{self.head.pid}   # the fake workers' raylets, in the head's group")
        try:
            os.killpg(self.head.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.head.wait(10)
        deadline = time.time() + timeout
        while self.processes() and time.time() < deadline:
            time.sleep(0.5)


def sweep_entrypoint(root: Path) -> list[str]:
    """A smoke sweep (2 trials, 2 IMP levels of 20 iterations at 64 px) whose every file is under ``root``."""
    return [sys.executable, "-m", "lipsweep.cli.main", "run", "rewind_ablation", "--profile", "smoke",
            "--store", str(root / "store"), "--storage", str(root / "tune"),
            "--tracking-uri", f"sqlite:///{root / 'mlflow.db'}", "--shared-path", str(root), "--no-analysis"]


def trial_runs(root: Path) -> tuple[MlflowClient, list]:
    client = MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
    exp = client.get_experiment_by_name("lipsweep/rewind_ablation")
    runs = client.search_runs([exp.experiment_id]) if exp else []
    return client, [r for r in runs if r.data.tags.get("lipsweep.role") == "trial"]


@pytest.mark.cluster
@pytest.mark.timeout(480)
def test_sweep_job_on_a_fake_multinode_cluster_adds_workers_and_tears_down(tmp_path):
    """Head up with no CPUs; ``ray job submit`` a smoke sweep; the autoscaler adds workers for its trials;
    every level lands in MLflow once; teardown leaves no process of the cluster.

    No ``--working-dir``: every fake node is a process on this machine running this venv, so the job's
    entrypoint is this interpreter (``sys.executable -m lipsweep.cli.main``); a working dir would be zipped,
    uploaded and unpacked per node for nothing. Real clusters ship the checkout by ``file_mounts``."""
    log = FlowLog(tmp_path / "launcher.log")
    print(f"launcher flow log: {tmp_path / 'launcher.log'}")
    cluster = FakeCluster(tmp_path, log)
    try:
        cluster.up()
        assert [n["node_id"] for n in cluster.nodes()] == [FAKE_HEAD_ID]  # no worker before the job
        job = log.run([_bin("ray"), "job", "submit", "--address", cluster.address, "--submission-id",
                       "lipsweep-smoke", "--", *sweep_entrypoint(tmp_path)], cluster.env, 240)
        status = cluster.api("/api/jobs/lipsweep-smoke")["status"]
        log.write(f"job lipsweep-smoke: {status}")
        assert job.returncode == 0 and status == "SUCCEEDED", job.stdout[-3000:]
        workers = {n["node_id"] for n in cluster.nodes() if not n["is_head_node"]}
        added = re.findall(r"Adding (\d+) node\(s\) of type ray\.worker\.cpu", cluster.monitor_log())
        log.write("autoscaler: " + "; ".join(f"Adding {n} node(s) of type ray.worker.cpu" for n in added))
        assert 1 <= len(workers) <= 2 and all(w.startswith("f" * 51) for w in workers), workers
        assert sum(map(int, added)) == len(workers), added
        client, runs = trial_runs(tmp_path)
        assert len(runs) == 2 and {r.info.status for r in runs} == {"FINISHED"}, [r.info.run_name for r in runs]
        for r in runs:
            history = sorted((m.step, round(m.value, 4)) for m in client.get_metric_history(r.info.run_id, "sparsity"))
            assert history == [(0, 0.0), (1, 0.2), (2, 0.36)], history  # every level exactly once, 0.8^k density
            ran_on = {v for k, v in r.data.tags.items() if k == "lipsweep.node" or k.startswith("lipsweep.node.level_")}
            assert len(ran_on) >= 1 and ran_on <= workers, (ran_on, workers)  # on added workers, never the head
    finally:
        cluster.down()
        log.write("monitor.log (launches):\n" + "\n".join(
            line for line in cluster.monitor_log().splitlines() if "Launching" in line or "Adding" in line))
    leftovers = cluster.processes()
    log.write(f"after teardown: {len(leftovers)} processes of this cluster")
    assert leftovers == [], leftovers
    shutil.rmtree(cluster.temp, ignore_errors=True)
