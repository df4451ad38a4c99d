"""Measure the DIP's iterations per second per device, width and size: the table ``lipsweep show`` prices with.

Each entry times ``lipsweep.fitting.fit.fit`` (what every trial's fit runs: forward, MSE, backward, Adam, the EMA,
the PSNR every step, backtracking) on Set5/baby resized to SIZE px, after a two-iteration warm-up, its iterations chosen from the
warm-up so that they take about ``--budget`` seconds but are never fewer than ``--min-iters`` (512 px at width
128 on one CPU thread takes seconds a step). The grid is measured ``--rounds`` times over and each entry keeps
its median round (``spread``: its slowest round over its fastest). An entry whose warm-up steps take over ``--skip`` seconds each is left out and listed in the
table's ``skipped``. CPU runs on one thread, as trials do (``RunConfig.threads``), and its ``it_s`` counts the
process's CPU time: what an idle core takes, which a machine shared with other jobs does not stretch as it
stretches the wall clock (``wall_it_s`` and ``load``, the 1-minute load average, show how busy it was). CUDA is
measured too where ``torch.cuda.is_available()``, on the wall clock, synchronised.

    python benchmarks/calibrate.py [--sizes 64 128 256 512] [--widths 16 32 64 128] [--devices cpu cuda]
                                   [--merge] [--out lipsweep/data/calibration.json]

``--merge`` keeps the devices already in the table that this run does not measure, so a GPU machine adds
``cuda`` to a table measured on CPU (``python benchmarks/calibrate.py --devices cuda --merge``).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import time
from dataclasses import replace
from pathlib import Path

import torch

from lipsweep.core.platforms import cpu_name
from lipsweep.fitting.calibration import TABLE, fit_device, leave_one_out
from lipsweep.fitting.config import ProblemConfig, RunConfig, default_fit
from lipsweep.fitting.fit import fit, prepare
from lipsweep.priors import PRIORS, ModelConfig


def timed_fit(prep, cfg: RunConfig, iters: int, device: str) -> tuple[float, float]:
    """(seconds a step on this process's clock, wall seconds a step) over ``iters`` steps of ``fit``.
    On CPU the clock is the process's CPU time: one thread's compute, which an idle core turns into wall time
    alike, while a busy shared machine stretches only the wall time; on CUDA it is the wall clock."""
    wall, cpu = time.perf_counter(), time.process_time()
    fit(prep.model, prep.z, prep.problem, replace(cfg.fit, iters=iters))
    if device == "cuda":
        torch.cuda.synchronize()
    wall, cpu = (time.perf_counter() - wall) / iters, (time.process_time() - cpu) / iters
    return (cpu if device == "cpu" else wall), wall


def measure(model: str, width: int, size: int, device: str, args: argparse.Namespace) -> dict | None:
    """One round of one entry: seconds a step of ``fit`` over about ``args.budget`` seconds after a two-iteration
    warm-up; None when a warm-up step exceeds ``args.skip`` seconds."""
    cfg = RunConfig(problem=ProblemConfig("Set5/baby", "denoise", size=size),
                    model=ModelConfig(kind=model, width=width), fit=default_fit("denoise", model),
                    device=device, threads=1)
    prep = prepare(cfg)
    first, _ = timed_fit(prep, cfg, 2, device)  # warm-up: allocator, kernels, cuDNN's algorithm choice
    if first > args.skip:
        return None
    iters = max(args.min_iters, min(500, round(args.budget / max(first, 1e-4))))
    step, wall = timed_fit(prep, cfg, iters, device)
    h, w = prep.problem.observation.shape[-2:]
    return {"model": model, "width": width, "cost_width": PRIORS.get(model).cost_width(width), "size": size,
            "pixels": int(h * w), "iters": iters, "step": step, "wall": wall, "load": os.getloadavg()[0]}


def combine(rounds: list[dict]) -> dict:
    """An entry's rounds as one: the median step, the spread of it/s between rounds, the busiest load seen."""
    steps = sorted(r["step"] for r in rounds)
    keep = {k: v for k, v in rounds[0].items() if k not in ("step", "wall", "load", "iters")}
    return {**keep, "it_s": round(1 / statistics.median(steps), 4), "rounds": len(rounds),
            "iters": sum(r["iters"] for r in rounds), "spread": round(steps[-1] / steps[0], 3),
            "wall_it_s": round(1 / statistics.median(r["wall"] for r in rounds), 4),
            "load": round(max(r["load"] for r in rounds), 2)}


def device_table(device: str, args: argparse.Namespace) -> dict:
    """Every (model, width, size) on ``device``, ``args.rounds`` times over (a burst of other work on a shared
    machine then hits one round of an entry, not all), with the fitted model and its error."""
    name = cpu_name() if device == "cpu" else torch.cuda.get_device_name(0)
    grid = [(m, w, s) for m in args.models for s in args.sizes for w in args.widths]
    measure(*grid[0], device, args)  # the process's own first-call costs
    rounds: dict[tuple, list[dict]] = {key: [] for key in grid}
    skipped = []
    for r in range(args.rounds):
        for key in grid:
            label = f"{key[0]} width {key[1]} at {key[2]} px"
            if label in skipped:
                continue
            entry = measure(*key, device, args)
            if entry is None:
                skipped.append(label)
                print(f"{device}: {label}: skipped (warm-up over {args.skip:.0f} s)", flush=True)
                continue
            rounds[key].append(entry)
            print(f"{device} round {r + 1}: {label}: {1 / entry['step']:.3f} it/s ({entry['iters']} iterations)",
                  flush=True)
    entries = [combine(v) for v in rounds.values() if v]
    table = {"name": name, "threads": 1 if device == "cpu" else None, "torch": torch.__version__,
             "clock": "process CPU time" if device == "cpu" else "wall, synchronised",
             "measured": datetime.date.today().isoformat(), "entries": entries, "skipped": skipped}
    table["model"] = model_summary(entries)
    return table


def model_summary(entries: list[dict]) -> dict:
    """What ``lipsweep.fitting.calibration`` fits to the entries, and how far off it is: the model alone on the entries,
    and the corrected model predicting each entry from the others."""
    fitted, loo = fit_device(entries), [abs(e) for e in leave_one_out(entries)]
    return {"t": "a + pixels * (p + c * width + b * width^2) seconds, corrected by the entries' residuals",
            "a": fitted.a, "p": fitted.p, "c": fitted.c, "b": fitted.b, "model_error": round(fitted.model_error, 4),
            "loo_rms_error": round((sum(e * e for e in loo) / len(loo)) ** 0.5, 4), "loo_max_error": round(max(loo), 4)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["dip"])
    ap.add_argument("--sizes", type=int, nargs="+", default=[64, 128, 256, 512])
    ap.add_argument("--widths", type=int, nargs="+", default=[16, 32, 64, 128])
    ap.add_argument("--devices", nargs="+", default=["cpu", "cuda"], choices=("cpu", "cuda"),
                    help="cuda is skipped where torch.cuda.is_available() is false")
    ap.add_argument("--budget", type=float, default=3.0, help="seconds of timed iterations per entry and round")
    ap.add_argument("--rounds", type=int, default=3, help="passes over the grid (each entry's median counts)")
    ap.add_argument("--min-iters", type=int, default=2)
    ap.add_argument("--skip", type=float, default=60.0, help="leave out entries whose warm-up takes longer")
    ap.add_argument("--merge", action="store_true", help="keep the table's other devices")
    ap.add_argument("--out", type=Path, default=TABLE)
    args = ap.parse_args()
    torch.set_num_threads(1)
    devices = [d for d in args.devices if d == "cpu" or torch.cuda.is_available()]
    old = json.loads(args.out.read_text()) if args.merge and args.out.is_file() else {"devices": {}}
    tables = {**old["devices"], **{d: device_table(d, args) for d in devices}}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"benchmark": "benchmarks/calibrate.py", "devices": tables}, indent=1) + "\n")
    for d in devices:
        print(f"{d}: {tables[d]['model']} -> {args.out}")


if __name__ == "__main__":
    main()
