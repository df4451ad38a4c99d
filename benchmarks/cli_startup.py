"""Start-up time of the light ``lipsweep`` commands (issue 16, "fast CLI": each < 1.5 s).

Each command runs as a fresh process, as a user types it, ``--runs`` times; the table gives the median (and
the range: a shared machine's load shows as a wide one). The JSON holds every run's seconds.

    python benchmarks/cli_startup.py [--runs 5] [--out runs/bench/cli_startup.json] [--launcher "python -m lipsweep.cli.main"]
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

TARGET_S = 1.5
COMMANDS = {"--help": ["--help"], "list": ["list"],
            "show rewind_ablation --profile paper": ["show", "rewind_ablation", "--profile", "paper"]}


def lipsweep() -> list[str]:
    """The installed console script beside this interpreter, else the module (same code, same imports)."""
    script = Path(sys.executable).parent / "lipsweep"
    found = str(script) if script.is_file() else shutil.which("lipsweep")
    return [found] if found else [sys.executable, "-m", "lipsweep.cli.main"]


def timed(argv: list[str]) -> float:
    """Wall seconds of one run; a failing command is an error, not a fast time."""
    start = time.perf_counter()
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    return time.perf_counter() - start


def measure(runs: int, base: list[str]) -> dict[str, dict]:
    out = {}
    for name, args in COMMANDS.items():
        seconds = [timed([*base, *args]) for _ in range(runs)]
        out[name] = {"median_s": statistics.median(seconds), "min_s": min(seconds), "max_s": max(seconds),
                     "runs_s": seconds, "under_target": statistics.median(seconds) < TARGET_S}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--out", type=Path, default=Path("runs/bench/cli_startup.json"))
    ap.add_argument("--launcher", help="how to start lipsweep, e.g. another checkout's 'python -m lipsweep.cli.main' "
                    "(default: the console script)")
    args = ap.parse_args()
    base = shlex.split(args.launcher) if args.launcher else lipsweep()
    results = measure(args.runs, base)
    print(f"{'command':<46} {'median s':>9} {'min s':>7} {'max s':>7}  < {TARGET_S} s")
    for name, r in results.items():
        print(f"{'lipsweep ' + name:<46} {r['median_s']:>9.2f} {r['min_s']:>7.2f} {r['max_s']:>7.2f}  "
              f"{'yes' if r['under_target'] else 'no'}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"runs": args.runs, "target_s": TARGET_S, "python": sys.version.split()[0], "launcher": base,
                                    "commands": results}, indent=1))
    print(f"-> {args.out}")


if __name__ == "__main__":
    main()
