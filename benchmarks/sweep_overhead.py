"""Overhead of Ray Tune + MLflow over the bare fits, on the README main job's shape, in the same run.

The experiment (default: ``rewind_ablation --profile local``, the main job: 24 trials x 9 levels sharing
their fits through the trunk store) runs twice on fresh stores:
(a) a plain loop: a ``multiprocessing`` pool of one process per core, each running whole trials with the
    same code a Tune trial runs (``run_trial`` over a shared store, one thread each);
(b) the sweep: local Ray, one Tune trial per trial with the experiment's resources, every level reported,
    checkpointed and logged to a SQLite MLflow store from the driver, as ``make run`` does.
Both run the same fits (checked), so the difference is the machinery: Ray start-up, actors, reporting,
checkpoints, MLflow. Target (issue 16): <= 5%. ``--set iters=N`` shortens every fit (default 100 of the
profile's 500, so a run takes minutes): the machinery's cost is per level, so a shorter fit overstates it.

Loop and sweep alternate (``--pairs``, default 2) and the median overhead is reported.

    python benchmarks/sweep_overhead.py [--experiment rewind_ablation] [--profile local] [--set iters=100] [--pairs 2]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import statistics
import tempfile
import time
from pathlib import Path


def run_one(args: tuple[dict, str]) -> int:
    """One trial in a pool process, as the trainable runs it (same store, same thread count)."""
    import torch

    from lipsweep.kinds.base import TrialConfig, run_trial
    from lipsweep.lottery.store import TrunkStore
    from lipsweep.lottery.tickets import Tickets

    spec, store = args
    trial = TrialConfig(**spec)
    torch.set_num_threads(trial.threads)
    return sum(1 for _ in run_trial(trial, Tickets(TrunkStore(store))))


def plain_loop(exp, store: Path, cores: int) -> float:
    start = time.perf_counter()
    with multiprocessing.get_context("spawn").Pool(cores) as pool:
        levels = sum(pool.imap_unordered(run_one, [(t.as_dict(), str(store)) for t in exp.trials]))
    assert levels == sum(t.levels + 1 for t in exp.trials), levels
    return time.perf_counter() - start


def sweep(exp, root: Path) -> float:
    from lipsweep.sweep.options import SweepOptions
    from lipsweep.sweep.tune import run_sweep

    opts = SweepOptions(store=str(root / "store"), storage=str(root / "tune"),
                        tracking_uri=f"sqlite:///{root / 'mlflow.db'}", quiet=True)
    start = time.perf_counter()
    summary = run_sweep(exp, opts)
    seconds = time.perf_counter() - start
    assert len(summary.finished) == len(exp.trials), summary.incomplete or summary.failed
    return seconds


def one_pair(exp, root: Path, cores: int) -> dict:
    """The loop, then the sweep, on fresh stores; both must run the same fits."""
    from lipsweep.lottery.store import TrunkStore

    loop = plain_loop(exp, root / "loop", cores)
    fits = len(TrunkStore(root / "loop").fit_log())
    swept = sweep(exp, root / "sweep")
    assert fits == len(TrunkStore(root / "sweep" / "store").fit_log())
    return {"fits": fits, "loop_s": round(loop, 1), "sweep_s": round(swept, 1),
            "overhead": round((swept - loop) / loop, 4)}


def main() -> None:
    from lipsweep.experiments.spec import load, parse_set

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--experiment", default="rewind_ablation")
    ap.add_argument("--profile", default="local")
    ap.add_argument("--set", nargs="*", default=["iters=100"], metavar="KEY=VALUE")
    ap.add_argument("--pairs", type=int, default=2, help="loop/sweep pairs, interleaved (a busy machine's load "
                                                          "drifts: one pair alone measured 5%% and 27%%)")
    ap.add_argument("--out", default="runs/bench/sweep_overhead.json")
    args = ap.parse_args()
    exp = load(args.experiment, args.profile, parse_set(args.set))
    cores = max(1, (os.cpu_count() or 1) // max(1, int(exp.resources["cpu"])))
    pairs = []
    for i in range(args.pairs):
        with tempfile.TemporaryDirectory() as tmp:
            pairs.append(one_pair(exp, Path(tmp), cores))
        print(json.dumps(pairs[-1]), flush=True)
    row = {"experiment": f"{exp.name} [{exp.profile}] {' '.join(args.set)}", "trials": len(exp.trials),
           "levels": sum(t.levels + 1 for t in exp.trials), "processes": cores, "pairs": pairs,
           "overhead_median": round(statistics.median(p["overhead"] for p in pairs), 4)}
    print(json.dumps({k: v for k, v in row.items() if k != "pairs"}))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(row, indent=1))


if __name__ == "__main__":
    main()
