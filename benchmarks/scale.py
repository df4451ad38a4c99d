"""A sweep of many trivial trials: what the driver, Tune and MLflow cost per trial, measured end to end.

N trials of a 5-iteration, width-4 DIP fit at 64 px with two levels (dense + one pruned), on a local Ray
and a real ``mlflow server`` on loopback (artifacts proxied; ``--direct``: written by the driver), as one
``run_sweep``. Reported:
- time to the first trial's start (its MLflow run's start time, taken when Tune starts the trial);
- trials per minute from the first start to the end;
- the driver process's CPU seconds and peak memory (a fresh process per N: Ray's workers are others);
- that every trial has exactly one run, with levels 0 and 1 each logged once.
Targets (issue 16): first trial within 10 s for 1,000 trials; >= 150 trials per minute on 2 cores; driver
memory flat in N.

    python benchmarks/scale.py --trials 100 300 [--out runs/bench/scale.json] [--sqlite | --direct]
"""

from __future__ import annotations

import argparse
import json
import resource
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from mlflow.tracking import MlflowClient

from lipsweep.experiments.spec import Experiment
from lipsweep.kinds.base import TrialConfig
from lipsweep.sweep.options import SweepOptions
from lipsweep.sweep.tune import run_sweep


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(root: Path, direct: bool) -> tuple[subprocess.Popen, str]:
    """``mlflow server`` on loopback with its own SQLite backend; waits for /health. Artifacts go through it
    (proxied, ``--artifacts-destination``), or (``direct``) the server only names an artifact root that the
    driver writes itself (``--no-serve-artifacts``, as with a bucket every node can reach)."""
    port = free_port()
    artifacts = (["--default-artifact-root", str(root / "artifacts"), "--no-serve-artifacts"] if direct
                 else ["--artifacts-destination", str(root / "artifacts")])
    proc = subprocess.Popen([str(Path(sys.executable).with_name("mlflow")), "server", "--backend-store-uri",
                             f"sqlite:///{root / 'server.db'}", *artifacts,
                             "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
                            stdout=open(root / "server.log", "wb"), stderr=subprocess.STDOUT,
                            env={"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", "PATH": "/usr/bin:/bin"})
    uri = f"http://127.0.0.1:{port}"
    for _ in range(240):
        try:
            with urllib.request.urlopen(f"{uri}/health", timeout=2):
                return proc, uri
        except OSError:
            time.sleep(0.5)
    proc.kill()
    raise RuntimeError(f"mlflow server did not start; see {root / 'server.log'}")


def experiment(n: int) -> Experiment:
    trials = tuple(TrialConfig(image="Set5/baby", task="denoise", size=64, width=4, iters=5, levels=1, seed=s,
                               device="cpu") for s in range(n))
    return Experiment(name=f"scale_{n}", description="benchmark", paper="-", profile="smoke", kind="chain",
                      metric="psnr_ema", mode="max", trials=trials, labels=tuple(f"seed={t.seed}" for t in trials),
                      resources={"cpu": 1, "gpu": 0})


def check_runs(uri: str, name: str, parent: str, n: int) -> tuple[float, int]:
    """(earliest trial-run start in s since the epoch, trials whose levels 0 and 1 were each logged once)."""
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(f"lipsweep/{name}")
    runs = client.search_runs([exp.experiment_id], f"tags.`mlflow.parentRunId` = '{parent}'", max_results=50000)
    assert len(runs) == n, f"{len(runs)} trial runs for {n} trials"
    exact = sum(sorted(m.step for m in client.get_metric_history(r.info.run_id, "sparsity")) == [0, 1] for r in runs)
    return min(r.info.start_time for r in runs) / 1000, exact


def drive(n: int, root: Path, uri: str) -> dict:
    """The sweep, in this (fresh) process: its peak memory is this N's alone."""
    exp = experiment(n)
    usage0, start = resource.getrusage(resource.RUSAGE_SELF), time.time()
    summary = run_sweep(exp, SweepOptions(store=str(root / "store"), storage=str(root / "tune"),
                                          tracking_uri=uri, quiet=True))
    end, usage = time.time(), resource.getrusage(resource.RUSAGE_SELF)
    return {"start": start, "end": end, "parent": summary.parent_run_id, "finished": len(summary.finished),
            "driver_cpu_s": round(usage.ru_utime + usage.ru_stime - usage0.ru_utime - usage0.ru_stime, 1),
            "driver_peak_mb": round(usage.ru_maxrss / 1024, 1)}


def one(n: int, root: Path, sqlite: bool, direct: bool) -> dict:
    """A fresh tracking store (and server) and a fresh driver process for N trials; then the runs are counted."""
    root.mkdir(parents=True)
    server, uri = (None, f"sqlite:///{root / 'mlflow.db'}") if sqlite else start_server(root, direct)
    try:
        out = subprocess.run([sys.executable, __file__, "--drive", str(n), "--root", str(root), "--uri", uri],
                             check=True, capture_output=True, text=True).stdout
        got = json.loads(out.strip().splitlines()[-1])
        first, exact = check_runs(uri, experiment(n).name, got["parent"], n)
    finally:
        if server is not None:
            server.terminate()
            server.wait(30)
    return {"trials": n, "finished": got["finished"], "exactly_once": exact, "wall_s": round(got["end"] - got["start"], 1),
            "first_trial_s": round(first - got["start"], 1),
            "trials_per_min": round(n / max(got["end"] - first, 1e-9) * 60, 1),
            "driver_cpu_s": got["driver_cpu_s"], "driver_peak_mb": got["driver_peak_mb"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trials", type=int, nargs="+", default=[100, 300])
    ap.add_argument("--sqlite", action="store_true", help="log to a SQLite file instead of a server")
    ap.add_argument("--direct", action="store_true", help="the server does not proxy artifacts: the driver "
                                                          "writes them to the artifact root itself")
    ap.add_argument("--out", default="runs/bench/scale.json")
    ap.add_argument("--drive", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--root", help=argparse.SUPPRESS)
    ap.add_argument("--uri", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.drive:
        print(json.dumps(drive(args.drive, Path(args.root), args.uri)), flush=True)
        return
    store = "sqlite" if args.sqlite else "server, artifacts " + ("direct" if args.direct else "proxied")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.trials:
            rows.append({"store": store, **one(n, Path(tmp) / f"n{n}", args.sqlite, args.direct)})
            print(json.dumps(rows[-1]), flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"store": store, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
