"""What the trunk store saves on a rewind ablation (Fig. 9): one store vs every chain from scratch.

With the store, the four chains (rewind 0 / 5 / 10 / 20%) share the dense level 0 and its saved rewind
states: 1 + 4 x L fits. From scratch, each chain runs its own dense fit: 4 x (L + 1). A second request
for the whole ablation then costs no fit at all. Both are measured in the same run, same machine.

    python benchmarks/imp_sharing.py [--levels 3] [--iters 150] [--width 16] [--size 64]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import torch

from lipsweep.fitting.config import ProblemConfig, RunConfig, default_fit
from lipsweep.lottery.chain import ChainConfig
from lipsweep.lottery.store import TrunkStore
from lipsweep.lottery.tickets import Tickets
from lipsweep.priors import ModelConfig

REWINDS = (0.0, 0.05, 0.10, 0.20)


def ablation(tickets_for: Callable[[float], Tickets], base: ChainConfig, levels: int) -> tuple[float, int]:
    start, fits = time.perf_counter(), 0
    for r in REWINDS:
        tickets = tickets_for(r)
        fits += tickets.chain(replace(base, rewind=r), levels).fits
    return time.perf_counter() - start, fits


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--levels", type=int, default=3)
    ap.add_argument("--iters", type=int, default=150)
    ap.add_argument("--width", type=int, default=16)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    base = ChainConfig(run=RunConfig(problem=ProblemConfig("Set5/baby", "denoise", size=args.size),
                                     model=ModelConfig(width=args.width),
                                     fit=default_fit("denoise", iters=args.iters), device="cpu"))
    with tempfile.TemporaryDirectory() as tmp:
        shared = Tickets(TrunkStore(Path(tmp) / "shared"))
        t_shared, f_shared = ablation(lambda r: shared, base, args.levels)
        t_again, f_again = ablation(lambda r: shared, base, args.levels)
        t_scratch, f_scratch = ablation(lambda r: Tickets(TrunkStore(Path(tmp) / f"scratch_{r}")), base, args.levels)
    print(f"rewind ablation {REWINDS}, {args.levels} levels, {args.iters} iterations, width {args.width}, "
          f"{args.size} px")
    print(f"{'':<22} {'fits':>5} {'seconds':>9}")
    print(f"{'from scratch':<22} {f_scratch:>5} {t_scratch:>9.1f}")
    print(f"{'trunk store':<22} {f_shared:>5} {t_shared:>9.1f}")
    print(f"{'trunk store, again':<22} {f_again:>5} {t_again:>9.1f}")
    print(f"store / scratch: fits {f_shared / f_scratch:.3f}, time {t_shared / t_scratch:.3f}")


if __name__ == "__main__":
    main()
