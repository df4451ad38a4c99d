"""A real multi-node Ray cluster and a real MLflow server on this machine, loopback only.

Head on 127.0.0.2 (no CPUs: it takes no trials, like the cloud head), two workers on 127.0.0.3 and
127.0.0.4 with one CPU and a distinct custom resource each, so concurrent trials must spread; an
``mlflow server`` on 127.0.0.1 with its own SQLite backend and artifact directory. Every process is
started in its own session and stopped by PID (SIGTERM, then SIGKILL), also when a test fails.

    python tests/loopback_cluster.py        # start it, print the addresses, Ctrl-C to stop
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

HEAD_IP, WORKER_IPS = "127.0.0.2", ("127.0.0.3", "127.0.0.4")


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _bin(name: str) -> str:
    return str(Path(sys.executable).with_name(name))


class LoopbackCluster:
    def __init__(self, root: Path):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.port = free_port(HEAD_IP)
        self.address = f"{HEAD_IP}:{self.port}"
        self.procs: dict[str, subprocess.Popen] = {}
        self.env = {**os.environ, "RAY_AUTH_MODE": "token",
                    "RAY_USAGE_STATS_ENABLED": "0"}
        self.mlflow_port = free_port()
        self.tracking_uri = f"http://127.0.0.1:{self.mlflow_port}"
        # Ray's sockets live under its temp dir and a unix socket path has at most 107 bytes: a short one
        # (pytest's own tmp paths grow long under xdist)
        self.ray_tmp = Path(tempfile.mkdtemp(prefix="lsc-", dir="/tmp"))

    def _spawn(self, name: str, cmd: list[str], env: dict | None = None) -> subprocess.Popen:
        log = open(self.root / f"{name}.log", "ab")
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env or self.env, cwd=self.root,
                                start_new_session=True)
        self.procs[name] = proc
        return proc

    def start_head(self) -> None:
        """The runtime-env agent on a fixed port: with a self-assigned one, Ray's client server waits (60 s at
        most) for the head's node record to learn it, and on a loaded machine that wait gives up and takes
        ``ray start --block`` down. The client server on a free port, not 10001, which another Ray may hold."""
        self._spawn("head", [_bin("ray"), "start", "--head", "--block", f"--node-ip-address={HEAD_IP}",
                             f"--port={self.port}", "--num-cpus=0", "--resources={\"head\": 1}",
                             "--include-dashboard=false", f"--ray-client-server-port={free_port()}",
                             f"--runtime-env-agent-port={free_port()}", "--disable-usage-stats",
                             f"--temp-dir={self.ray_tmp}"])
        self.wait_nodes(1)

    def start_worker(self, i: int) -> None:
        """One node; every port it would bind on all interfaces is its own (nodes share this machine)."""
        ports = [f"--{name}={free_port()}" for name in (
            "node-manager-port", "object-manager-port", "metrics-export-port", "dashboard-agent-listen-port",
            "dashboard-agent-grpc-port", "runtime-env-agent-port")]
        base = 20000 + 1000 * i
        self._spawn(f"worker{i}", [_bin("ray"), "start", "--block", f"--address={self.address}",
                                   f"--node-ip-address={WORKER_IPS[i]}", "--num-cpus=1",
                                   f"--resources={{\"node_{i}\": 1}}", "--disable-usage-stats", *ports,
                                   f"--min-worker-port={base}", f"--max-worker-port={base + 999}"])

    def alive_nodes(self) -> int:
        """Active nodes as `ray status` (which asks the GCS directly) reports them."""
        out = subprocess.run([_bin("ray"), "status", f"--address={self.address}"], capture_output=True, text=True,
                             env=self.env, timeout=60)
        active, count = False, 0
        for line in out.stdout.splitlines():
            if line.strip().startswith("Active:"):
                active = True
            elif active and line.strip().startswith(("Pending:", "Recent failures:", "Idle:")):
                active = line.strip().startswith("Idle:")
            elif active and " node_" in line:
                count += 1
        return count

    def wait_nodes(self, n: int, timeout: float = 90) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.alive_nodes() >= n:
                return
            time.sleep(1)
        raise TimeoutError(f"{n} Ray nodes not alive after {timeout} s; see {self.root}/*.log")

    def start_mlflow(self) -> None:
        env = {**self.env, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
        self._spawn("mlflow", [_bin("mlflow"), "server", "--backend-store-uri",
                               f"sqlite:///{self.root / 'mlflow.db'}", "--artifacts-destination",
                               str(self.root / "mlartifacts"), "--host", "127.0.0.1", "--port",
                               str(self.mlflow_port), "-w", "1"], env)
        deadline = time.time() + 60
        while time.time() < deadline:
            try:
                with urllib.request.urlopen(f"{self.tracking_uri}/health", timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                time.sleep(0.5)
        raise TimeoutError("mlflow server did not answer /health in 60 s")

    def stop(self, name: str, sig: int = signal.SIGTERM, wait: float = 20) -> None:
        proc = self.procs.pop(name, None)
        if proc is None or proc.poll() is not None:
            return
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(wait)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)

    def start(self) -> LoopbackCluster:
        self.start_head()
        for i in range(len(WORKER_IPS)):
            self.start_worker(i)
            self.wait_nodes(2 + i)
        self.start_mlflow()
        return self

    def shutdown(self) -> None:
        for name in [n for n in self.procs if n.startswith("worker")] + ["mlflow", "head"]:
            self.stop(name)
        shutil.rmtree(self.ray_tmp, ignore_errors=True)


if __name__ == "__main__":
    cluster = LoopbackCluster(Path(tempfile.mkdtemp(prefix="lipsweep-cluster-")))
    try:
        cluster.start()
        print(f"Ray: {cluster.address} (RAY_AUTH_MODE=token)\nMLflow: {cluster.tracking_uri}\nlogs: {cluster.root}")
        print(f"try: RAY_AUTH_MODE=token lipsweep run rewind_ablation --profile smoke --address {cluster.address} "
              f"--tracking-uri {cluster.tracking_uri} --shared-path {cluster.root} --store {cluster.root}/store "
              f"--storage {cluster.root}/tune")
        signal.pause()
    except KeyboardInterrupt:
        pass
    finally:
        cluster.shutdown()
