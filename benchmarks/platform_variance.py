"""How much the platform matters (issue 24): the same chains under torch's CPU kernel sets and thread counts,
next to the seed-to-seed spread of those chains.

Float32 kernels differ in their last bits between CPUs (AVX-512, AVX2, the portable ``default`` set) and
between thread counts; a global magnitude ranking then flips weights near its threshold, and the masks of
later levels drift apart. This measures, per level, the overlap of the masks (Jaccard of the kept weights),
the PSNR difference, and puts both beside what another seed does to the same chain. Then it asks whether a
conclusion of the local profiles moves: the IMP-vs-random gap (``lip_existence``, Fig. 3), the rewind effect
(``rewind_ablation``, Fig. 9) and the matching-ticket sparsity (the sparsest level within 0.5 dB of dense).

Each variant runs in its own process (``ATEN_CPU_CAPABILITY`` is read once, when torch loads) with its own
store; the chains are the local profiles' shapes (64 px, width 16; 500 iterations x 8 levels on Set5/baby,
600 x 12 on DIP/F16_GT), a subset of their trials.

    python benchmarks/platform_variance.py --out runs/platform_variance [--quick] [--jobs 2]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

SEEDS = (0, 1, 2)
METRIC = "psnr_ema"  # the local profiles' metric
DELTA = 0.5  # dB: a "matching" ticket (the paper's criterion, within_delta)


def chains(quick: bool) -> dict[str, dict]:
    """name -> trial fields: the rewind ablation's extremes and lip_existence's IMP and random, local shapes."""
    rew = dict(image="Set5/baby", task="denoise", size=64, width=16, iters=500, levels=8)
    lip = dict(image="DIP/F16_GT", task="denoise", size=64, width=16, iters=600, levels=12)
    if quick:  # a shape check of this script in a few minutes, not a measurement
        rew.update(iters=60, levels=3)
        lip.update(iters=60, levels=3)
    return {"rewind_0": {**rew, "rewind": 0.0}, "rewind_0.2": {**rew, "rewind": 0.2},
            "lip_imp": {**lip, "method": "imp"}, "lip_random": {**lip, "method": "random"}}


def variants() -> dict[str, dict]:
    """name -> (environment, threads, seeds): the machine's own kernels at every seed, the others at seed 0."""
    return {"own": {"env": {}, "threads": 1, "seeds": SEEDS},
            "avx2": {"env": {"ATEN_CPU_CAPABILITY": "avx2"}, "threads": 1, "seeds": (0,)},
            "default": {"env": {"ATEN_CPU_CAPABILITY": "default"}, "threads": 1, "seeds": (0,)},
            "own_2threads": {"env": {}, "threads": 2, "seeds": (0,)}}


def worker(out: Path, variant: str, seed: int, threads: int, quick: bool) -> None:
    """One variant, one seed: every chain through its own store; levels and kept-weight masks to ``out``."""
    import torch

    from lipsweep.core.platforms import current
    from lipsweep.kinds.base import TrialConfig
    from lipsweep.lottery.store import TrunkStore
    from lipsweep.lottery.tickets import Tickets

    torch.set_num_threads(threads)
    tk = Tickets(TrunkStore(out / "stores" / f"{variant}-s{seed}"))
    result = {"variant": variant, "seed": seed, "threads": threads, "platform": current(threads).as_dict(),
              "chains": {}}
    masks = {}
    start = time.perf_counter()
    for name, fields in chains(quick).items():
        trial = TrialConfig(**fields, seed=seed, threads=threads)
        cfg = trial.chain()
        recs = list(tk.iter_levels(cfg, trial.levels))
        result["chains"][name] = [{"level": r.level, "sparsity": r.sparsity, METRIC: r.metrics[METRIC],
                                   "psnr_ema_peak": r.metrics["psnr_ema_peak"], "mask": r.mask_hash} for r in recs]
        for r in recs[1:]:
            masks[f"{name}/{r.level}"] = tk.mask(cfg, r.level).bits()
    result["seconds"] = time.perf_counter() - start
    np.savez_compressed(out / f"{variant}-s{seed}.npz", **masks)
    (out / f"{variant}-s{seed}.json").write_text(json.dumps(result, indent=1))


def run_all(out: Path, quick: bool, jobs: int) -> None:
    """Every (variant, seed) as a subprocess, ``jobs`` at a time (a 2-thread variant takes two slots' worth)."""
    runs = [(v, s, spec) for v, spec in variants().items() for s in spec["seeds"]]

    def one(item) -> None:
        v, s, spec = item
        if (out / f"{v}-s{s}.json").exists():
            return
        env = {**os.environ, **spec["env"]}
        cmd = [sys.executable, __file__, "--out", str(out), "--worker", v, "--seed", str(s),
               "--threads", str(spec["threads"])] + (["--quick"] if quick else [])
        subprocess.run(cmd, env=env, check=True)
        print(f"done {v} seed {s}", flush=True)

    with ThreadPoolExecutor(jobs) as pool:
        list(pool.map(one, runs))


def jaccard(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max(1, (a | b).sum()))


def matching(curve: list[dict]) -> float | None:
    from lipsweep.core.records import within_delta

    found = within_delta([(r["sparsity"], r[METRIC]) for r in curve], DELTA)
    return None if found is None else found[0]


def conclusions(chains_: dict[str, list[dict]]) -> dict[str, float]:
    """The local profiles' conclusions in numbers: mean gap over pruned levels, matching sparsity."""
    def gap(a: str, b: str) -> float:
        return float(np.mean([x[METRIC] - y[METRIC] for x, y in zip(chains_[a][1:], chains_[b][1:])]))

    out = {"imp_minus_random_db": gap("lip_imp", "lip_random"),
           "rewind0.2_minus_rewind0_db": gap("rewind_0.2", "rewind_0")}
    for name in ("rewind_0", "rewind_0.2", "lip_imp"):
        out[f"matching_sparsity_{name}"] = matching(chains_[name])
    return out


def load(out: Path, variant: str, seed: int) -> tuple[dict, dict]:
    return json.loads((out / f"{variant}-s{seed}.json").read_text()), dict(np.load(out / f"{variant}-s{seed}.npz"))


def compare(out: Path) -> dict:
    """Per chain and level: Jaccard and PSNR difference of each variant vs the machine's own kernels (seed 0),
    and the same between seeds 0 and 1, 0 and 2 of the machine's own; then each variant's conclusions."""
    base, base_m = load(out, "own", 0)
    others = {f"{v}": load(out, v, 0) for v in variants() if v != "own"}
    others.update({f"seed{s}": load(out, "own", s) for s in SEEDS[1:]})
    rows = []
    for name, curve in base["chains"].items():
        for i, rec in enumerate(curve):
            row = {"chain": name, "level": rec["level"], "sparsity": round(rec["sparsity"], 3), METRIC: rec[METRIC]}
            for other, (res, m) in others.items():
                o = res["chains"][name][i]
                row[f"dpsnr_{other}"] = o[METRIC] - rec[METRIC]
                row[f"jaccard_{other}"] = (1.0 if rec["level"] == 0
                                           else jaccard(base_m[f"{name}/{rec['level']}"], m[f"{name}/{rec['level']}"]))
            rows.append(row)
    concl = {"own": conclusions(base["chains"])}
    concl.update({k: conclusions(res["chains"]) for k, (res, _) in others.items()})
    return {"rows": rows, "conclusions": concl, "platforms": {k: r["platform"] for k, (r, _) in
                                                              {"own": (base, None), **others}.items()},
            "seconds": {k: r["seconds"] for k, (r, _) in {"own": (base, None), **others}.items()}}


def table(result: dict) -> str:
    """The closing note's table: per chain and level, |dPSNR| and Jaccard per platform variant vs seeds."""
    others = [k for k in result["conclusions"] if k != "own"]
    head = ["chain", "lvl", "sparsity", METRIC] + [f"dB {o}" for o in others] + [f"J {o}" for o in others]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in result["rows"]:
        cells = [r["chain"], str(r["level"]), f"{r['sparsity']:.3f}", f"{r[METRIC]:.2f}"]
        cells += [f"{r[f'dpsnr_{o}']:+.2f}" for o in others] + [f"{r[f'jaccard_{o}']:.3f}" for o in others]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    keys = list(result["conclusions"]["own"])
    lines.append("| conclusion | own | " + " | ".join(others) + " |")
    lines.append("|" + "---|" * (2 + len(others)))
    for k in keys:
        vals = [result["conclusions"][v][k] for v in ["own", *others]]
        lines.append(f"| {k} | " + " | ".join("-" if v is None else f"{v:.3f}" for v in vals) + " |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="runs/platform_variance")
    ap.add_argument("--quick", action="store_true", help="tiny chains: checks the script, measures nothing")
    ap.add_argument("--jobs", type=int, default=2, help="variants run at once (one thread each)")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.worker:
        worker(out, args.worker, args.seed, args.threads, args.quick)
        return
    run_all(out, args.quick, args.jobs)
    result = compare(out)
    (out / "result.json").write_text(json.dumps(result, indent=1))
    text = table(result)
    (out / "table.md").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
