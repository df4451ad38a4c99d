"""Seeds batched on one GPU (lipsweep.fitting.batched): throughput of k = 1, 2, 4, 8 batched seeds against the same k
seeds fitted one after another, and the PSNR cost of bf16 autocast + channels_last. Needs a CUDA device.

Throughput is seed-iterations per second of the fit loop itself (``metrics["seconds"]``: no image loading or
network building): k * iters / seconds for the batch, k * iters / (sum of the k fits' seconds) one by one.
Runs interleave, and the order flips every repeat, so a slow stretch of the machine hits both alike; the
ratio reported is the median of the paired ratios. Target: >= 3x at k = 8 (256 and 512 px, full width).

Precision: ``--quality-seeds`` seeds fitted ``--quality-iters`` iterations four ways: one by one (fp32), batched
fp32, batched bf16, batched bf16 + channels_last. fp32 one by one vs batched is the float-order floor (DIP +
Adam amplifies summation-order noise, see lipsweep/batched.py); the target is |mean change| <= 0.05 dB for the
bf16 variants against batched fp32, read beside that floor. A variant that fails (e.g. channels_last refused
by ``fit_batch``'s gradient check) is recorded with its error; the others still run.

Without CUDA it prints "no CUDA device: gpu_seeds not run" and exits 0, writing nothing. ``--cpu`` runs the
same measurements on the CPU (a smoke check at tiny size; the bf16/channels_last variants are CUDA-only and
are skipped), labelled as CPU in the output and the JSON.

    python benchmarks/gpu_seeds.py [--size 256 512] [--ks 1 2 4 8] [--width 128] [--iters 50] [--repeats 3]
    python benchmarks/gpu_seeds.py --cpu --size 64 --width 8 --iters 20   # smoke check, no GPU needed
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from dataclasses import replace
from pathlib import Path

import torch

from lipsweep.fitting.batched import fit_seeds
from lipsweep.fitting.config import ProblemConfig, RunConfig, default_fit
from lipsweep.fitting.fit import prepare, run
from lipsweep.priors import ModelConfig

TARGET_RATIO, TARGET_DB = 3.0, 0.05


def configs(args: argparse.Namespace, size: int, k: int, iters: int) -> list[RunConfig]:
    base = RunConfig(problem=ProblemConfig(args.image, args.task, size=size), model=ModelConfig(width=args.width),
                     fit=default_fit(args.task, iters=iters), device=args.device, threads=args.threads)
    return [replace(base, seed=s) for s in range(k)]


def separate(cfgs: list[RunConfig]) -> tuple[float, list[dict]]:
    """k fits one after another: seed-iterations per second of their loops, and their metrics."""
    results = [run(c, prep=prepare(c))[0] for c in cfgs]
    seconds = sum(r.metrics["seconds"] for r in results)
    return len(cfgs) * cfgs[0].fit.iters / seconds, [r.metrics for r in results]


def batched(cfgs: list[RunConfig], **flags: bool) -> tuple[float, list[dict]]:
    """The k seeds as one batch: seed-iterations per second of its loop, and the per-seed metrics."""
    results = fit_seeds(cfgs, preps=[prepare(c) for c in cfgs], **flags)
    return len(cfgs) * cfgs[0].fit.iters / results[0][0].metrics["seconds"], [r.metrics for r, _ in results]


def throughput(args: argparse.Namespace, size: int) -> list[dict]:
    """Per k: both throughputs (median over repeats) and the median paired ratio, runs interleaved."""
    batched(configs(args, size, max(args.ks), 3))  # warm-up: kernels, allocator
    separate(configs(args, size, 1, 3))
    rows = []
    for k in args.ks:
        cfgs = configs(args, size, k, args.iters)
        sep, bat = [], []
        for r in range(args.repeats):
            first_separate = (r + k) % 2 == 0
            for which in ((separate, sep), (batched, bat)) if first_separate else ((batched, bat), (separate, sep)):
                which[1].append(which[0](cfgs)[0])
        ratios = [b / s for b, s in zip(bat, sep)]
        rows.append({"size": size, "k": k, "separate_seed_iters_per_s": statistics.median(sep),
                     "batched_seed_iters_per_s": statistics.median(bat), "ratio": statistics.median(ratios),
                     "ratios": ratios})
        print(f"{size:>5} {k:>3} {rows[-1]['separate_seed_iters_per_s']:>12.2f} "
              f"{rows[-1]['batched_seed_iters_per_s']:>12.2f} {rows[-1]['ratio']:>7.2f}", flush=True)
    return rows


def _psnr(metrics: list[dict]) -> dict[str, list[float]]:
    return {key: [m[key] for m in metrics] for key in ("psnr_ema", "psnr_final")}


def _change(ref: dict[str, list[float]], other: dict[str, list[float]]) -> dict[str, dict[str, float]]:
    out = {}
    for key in ref:
        d = [b - a for a, b in zip(ref[key], other[key])]
        out[key] = {"mean": statistics.fmean(d), "max_abs": max(abs(x) for x in d)}
    return out


def quality(args: argparse.Namespace, cuda: bool) -> dict:
    """PSNR per seed of each variant, and its change against batched fp32 (the floor: one by one fp32)."""
    cfgs = configs(args, args.quality_size or args.size[0], args.quality_seeds, args.quality_iters)
    variants = {"batched_fp32": {}, "batched_bf16": {"bf16": True},
                "batched_bf16_channels_last": {"bf16": True, "channels_last": True}}
    found: dict[str, dict] = {"separate_fp32": _psnr(separate(cfgs)[1])}
    for name, flags in variants.items():
        if flags and not cuda:
            found[name] = {"skipped": "CUDA only"}
            continue
        try:
            found[name] = _psnr(batched(cfgs, **flags)[1])
        except (RuntimeError, ValueError) as e:  # e.g. channels_last refused by fit_batch's gradient check
            found[name] = {"error": str(e)}
    ref = found["batched_fp32"]
    changes = {name: _change(ref, v) for name, v in found.items() if name != "batched_fp32" and "psnr_ema" in v}
    ok = {name: abs(c["psnr_ema"]["mean"]) <= TARGET_DB for name, c in changes.items() if name != "separate_fp32"}
    return {"size": cfgs[0].problem.size, "iters": args.quality_iters, "seeds": args.quality_seeds,
            "psnr": found, "change_vs_batched_fp32": changes, "within_target": ok}


def parse(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, nargs="+", default=[256, 512])
    ap.add_argument("--ks", type=int, nargs="+", default=[1, 2, 4, 8])
    ap.add_argument("--width", type=int, default=128)
    ap.add_argument("--iters", type=int, default=50)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--task", default="denoise")
    ap.add_argument("--image", default="Set5/baby")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads of each fit (as trials run)")
    ap.add_argument("--quality-size", type=int, default=None, help="default: the first --size")
    ap.add_argument("--quality-iters", type=int, default=None, help="default: 300 on CUDA, --iters with --cpu")
    ap.add_argument("--quality-seeds", type=int, default=4)
    ap.add_argument("--cpu", action="store_true", help="smoke check on the CPU (results labelled CPU)")
    ap.add_argument("--out", type=Path, default=Path("runs/bench/gpu_seeds.json"))
    args = ap.parse_args(argv)
    args.device = "cpu" if args.cpu else "cuda"
    args.quality_iters = args.quality_iters or (args.iters if args.cpu else 300)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    if not args.cpu and not torch.cuda.is_available():
        print("no CUDA device: gpu_seeds not run")
        return 0
    device = "CPU (smoke check, not a GPU measurement)" if args.cpu else torch.cuda.get_device_name(0)
    print(f"device: {device}; torch {torch.__version__}; task {args.task}, width {args.width}, "
          f"{args.iters} iterations x {args.repeats} interleaved repeats")
    print(f"{'size':>5} {'k':>3} {'separate':>12} {'batched':>12} {'ratio':>7}   (seed-iterations/s)")
    rows = [row for size in args.size for row in throughput(args, size)]
    met = {str(r["size"]): r["ratio"] >= TARGET_RATIO for r in rows if r["k"] == 8}
    q = quality(args, cuda=not args.cpu)
    print(f"target >= {TARGET_RATIO}x at k = 8: {met or 'k = 8 not measured'}")
    print("precision, PSNR change against batched fp32 (dB):", json.dumps(q["change_vs_batched_fp32"], indent=1))
    print(f"bf16 variants within {TARGET_DB} dB: {q['within_target'] or 'not measured (CUDA only)'}")
    report = {"run": True, "cpu_smoke": args.cpu, "device": device, "torch": torch.__version__,
              "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
              "throughput": rows, "target_ratio_k8": TARGET_RATIO, "target_met_k8": met, "quality": q}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
