"""Iterations/second of ``lipsweep.fitting.fit.fit`` against a bare PyTorch DIP loop, measured in the same run.

The bare loop is the least a DIP fit can do: z + input noise, forward, MSE, backward, (mask the
gradients), Adam step. ``fit`` adds the EMA, the oracle PSNR every step, backtracking snapshots and the
curve (about 0.05 ms a step at 64 px, against ~70 ms for the step itself). Runs alternate, and the
order flips every repeat (bare-fit, fit-bare, ...), so a slow stretch of the machine or the allocator
state left by the previous run hits both alike; the ratio reported is the median of the paired ratios. Targets: >= 0.97x unmasked, >= 0.95x with a 90%-sparse mask.

    python benchmarks/fit_loop.py [--width 128] [--sizes 64 128] [--iters 30] [--repeats 6] [--threads 2]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from lipsweep.fitting.config import ProblemConfig, RunConfig, default_fit
from lipsweep.fitting.fit import apply_mask, fit, make_optimizer, prepare
from lipsweep.priors import ModelConfig, conv_weights


def random_mask(model: torch.nn.Module, density: float) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {n: torch.rand(w.shape, generator=g) < density for n, w in conv_weights(model).items()}


def bare_loop(cfg: RunConfig, mask: dict[str, torch.Tensor] | None) -> float:
    prep = prepare(cfg)
    model, z, problem = prep.model, prep.z, prep.problem
    pairs = apply_mask(model, mask) if mask else []
    opt = make_optimizer(list(model.parameters()), cfg.fit.lr)
    gen = torch.Generator().manual_seed(0)
    noise = torch.empty_like(z)
    start = time.perf_counter()
    for _ in range(cfg.fit.iters):
        opt.zero_grad(set_to_none=True)
        out = model(z + noise.normal_(generator=gen) * cfg.fit.reg_noise_std)
        loss = F.mse_loss(out, problem.observation)
        loss.backward()
        for w, m in pairs:
            w.grad.mul_(m)
        opt.step()
    return cfg.fit.iters / (time.perf_counter() - start)


def lipsweep_fit(cfg: RunConfig, mask: dict[str, torch.Tensor] | None) -> float:
    prep = prepare(cfg)
    result = fit(prep.model, prep.z, prep.problem, cfg.fit, seed=cfg.seed, mask=mask)
    return result.metrics["iters_per_second"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--width", type=int, default=128)
    ap.add_argument("--sizes", type=int, nargs="+", default=[64, 128])
    ap.add_argument("--iters", type=int, default=30)
    ap.add_argument("--repeats", type=int, default=6)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    print(f"width {args.width}, {args.iters} iterations x {args.repeats} alternating repeats, "
          f"{args.threads} threads, torch {torch.__version__}")
    print(f"{'size':>5} {'mask':>6} {'bare it/s':>10} {'fit it/s':>10} {'ratio':>7} {'target':>7}")
    for size in args.sizes:
        cfg = RunConfig(problem=ProblemConfig("Set5/baby", "denoise", size=size),
                        model=ModelConfig(width=args.width), fit=default_fit("denoise", iters=args.iters),
                        device="cpu")
        for density, target in ((None, 0.97), (0.1, 0.95)):
            mask = random_mask(prepare(cfg).model, density) if density else None
            bare_loop(cfg, mask)  # warm-up: allocator, kernels
            lipsweep_fit(cfg, mask)
            bare, ours = [], []
            for r in range(args.repeats):
                if r % 2 == 0:
                    bare.append(bare_loop(cfg, mask))
                    ours.append(lipsweep_fit(cfg, mask))
                else:
                    ours.append(lipsweep_fit(cfg, mask))
                    bare.append(bare_loop(cfg, mask))
            ratio = statistics.median(o / b for o, b in zip(ours, bare))
            label = "90%" if density else "dense"
            print(f"{size:>5} {label:>6} {statistics.median(bare):>10.2f} {statistics.median(ours):>10.2f} "
                  f"{ratio:>7.3f} {target:>7.2f}", flush=True)


if __name__ == "__main__":
    main()
