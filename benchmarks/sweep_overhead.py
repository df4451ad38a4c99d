"""Overhead of Ray Tune + MLflow over the bare fits, measured in the same run.

N trials, each one dense fit (64 px, 200 iterations, default full-width DIP, seeds 0..N-1), run
(a) in a plain Python loop, and (b) as a sweep: Ray started locally, one Tune trial per fit, every
level logged to a fresh SQLite MLflow store from the driver. Both use every core (the loop with all
threads, the sweep with one trial at a time holding all CPUs), so the difference is the machinery:
Ray start-up, actor scheduling, reporting, checkpoints, MLflow logging. Target: <= 5% overhead.

    python benchmarks/sweep_overhead.py [--trials 6] [--iters 200] [--size 64] [--width 128]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import torch

from lipsweep.experiments import Experiment
from lipsweep.store import TrunkStore
from lipsweep.sweep import SweepOptions, run_sweep
from lipsweep.tickets import Tickets
from lipsweep.trial import TrialConfig


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trials", type=int, default=6)
    ap.add_argument("--iters", type=int, default=200)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--width", type=int, default=128)
    args = ap.parse_args()
    cores = os.cpu_count() or 1
    trials = tuple(TrialConfig(image="Set5/baby", task="denoise", size=args.size, width=args.width, iters=args.iters,
                               levels=0, seed=s, device="cpu") for s in range(args.trials))
    exp = Experiment(name="sweep_overhead", description="benchmark", paper="-", profile="smoke", kind="chain",
                     metric="psnr_ema", mode="max", trials=trials, labels=tuple(f"seed={t.seed}" for t in trials),
                     resources={"cpu": cores, "gpu": 0})
    with tempfile.TemporaryDirectory() as tmp:
        torch.set_num_threads(cores)
        start = time.perf_counter()
        tickets = Tickets(TrunkStore(Path(tmp) / "loop"))
        for t in trials:
            tickets.chain(t.chain(), 0)
        loop = time.perf_counter() - start

        opts = SweepOptions(store=str(Path(tmp) / "sweep"), storage=str(Path(tmp) / "tune"),
                            tracking_uri=f"sqlite:///{Path(tmp) / 'mlflow.db'}", quiet=True)
        start = time.perf_counter()
        summary = run_sweep(exp, opts)
        sweep = time.perf_counter() - start
        assert not summary.failed, summary.failed
        fits = len(TrunkStore(opts.store).fit_log())
    print(f"{args.trials} trials x 1 fit ({args.size} px, {args.iters} iterations, width {args.width}), {cores} cores")
    print(f"plain loop         {loop:8.1f} s")
    print(f"Ray Tune + MLflow  {sweep:8.1f} s   ({fits} fits)")
    print(f"overhead           {(sweep - loop) / loop:8.1%}")


if __name__ == "__main__":
    main()
