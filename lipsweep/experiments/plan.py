"""What a sweep will cost before it runs: the fits still missing from the store, the hours they take, and the
wall-clock on N GPUs. A DIP step's cost is ``lottery/cost.py``'s; kinds without DIP chains price their own
work (``TrialKind.estimate``); this module adds them up.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from lipsweep.core.errors import ConfigError
from lipsweep.core.paths import record_of
from lipsweep.core.platforms import summarize
from lipsweep.experiments.spec import REPLAY_KINDS, Experiment
from lipsweep.fitting import calibration
from lipsweep.kinds.base import KINDS, TrialConfig
from lipsweep.lottery.chain import ChainConfig
from lipsweep.lottery.cost import (
    GPU_SPEEDUP,
    chain_peak_bytes,
    gpu_seconds_per_iter,
    measured_seconds,
    seconds_per_iter,
)
from lipsweep.lottery.store import TrunkStore
from lipsweep.pruning.methods import METHODS


@dataclass
class TrialPlan:
    label: str
    key: str
    levels: int
    fits_needed: int
    iters: int
    seconds: float
    gpu_seconds: float | None = None  # on a whole GPU: calibrated or a kind's own (None: seconds / GPU_SPEEDUP)


def peak_bytes(trial: TrialConfig) -> int:
    """What one step of the trial's fit holds in memory: activations per pixel x width, one forward pass per z
    (kinds without DIP chains, e.g. a generator's latent fit, are not modelled: 0)."""
    if KINDS.get(trial.kind).estimate is not None:
        return 0
    return chain_peak_bytes(trial.chain())


def available_bytes() -> int:
    """Memory this machine can give a new process now (MemAvailable), or its physical memory."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def check_memory(trials: Sequence[TrialConfig], free: int | None = None) -> None:
    """Refuse a fit this machine cannot hold (the kernel would kill it, deaf to Ctrl-C, after minutes)."""
    free = available_bytes() if free is None else free
    for t in trials:
        need = peak_bytes(t)
        if need > 0.8 * free:
            raise ConfigError("size", f"a fit of {t.image} at size {t.size} and width {t.width} needs about "
                                      f"{need / 2**30:.1f} GiB; this machine has {free / 2**30:.1f} GiB available "
                                      "(use a smaller size or width)")


def _found_levels(found: ChainConfig, levels: Sequence[int]) -> range:
    """The source levels a transfer needs fitted: level L's IMP mask is pruned from level L - 1's weights;
    a one-shot method's masks need no fit."""
    return range(1, max(levels)) if METHODS.get(found.method).sequential else range(0)


def _missing_fits(trial: TrialConfig, store: TrunkStore, dense_counted: set[str],
                  levels_counted: set[tuple[str, int]]) -> list[tuple[ChainConfig, int]]:
    """Fits the store lacks for ``trial``, per chain that runs them (the chain whose masks are found, and for an
    evaluation the target they are fitted on); a level shared with an earlier trial counts once."""
    found, evaluated_on = KINDS.get(trial.kind).chains(trial.typed)
    chains = tuple({c.chain_key: c for c in (found, evaluated_on) if c is not None}.values())
    needed = {c.chain_key: 0 for c in chains}
    for chain in chains:
        if chain.dense_key not in dense_counted and not store.has_record(store.dense_dir(chain.dense_key)):
            needed[chain.chain_key] += 1
        dense_counted.add(chain.dense_key)
    transfer = evaluated_on is not None and found.chain_key != evaluated_on.chain_key
    levels = trial.at_levels or range(1, trial.levels + 1)
    for level in _found_levels(found, levels) if transfer else levels:
        if (found.chain_key, level) not in levels_counted and not store.has_record(
                store.level_dir(found.chain_key, level)):
            needed[found.chain_key] += 1
        levels_counted.add((found.chain_key, level))
    if transfer:
        needed[evaluated_on.chain_key] += len(levels)  # the transfer fits themselves
    return [(c, needed[c.chain_key] * (2 if c.imp_target == "clean" else 1)) for c in chains]


def plan(exp: Experiment, store: TrunkStore) -> list[TrialPlan]:
    """Per trial, the fits the store does not hold yet and the seconds they take."""
    measured = measured_seconds(store)
    dense_counted: set[str] = set()
    levels_counted: set[tuple[str, int]] = set()
    out = []
    for trial, label in zip(exp.trials, exp.labels):
        estimate = KINDS.get(trial.kind).estimate
        if estimate is not None:
            fits, seconds, gpu_seconds = estimate(trial.typed, store, dense_counted)
            out.append(TrialPlan(label, trial.key, trial.levels, fits, trial.iters or 0, seconds, gpu_seconds))
            continue
        needed = _missing_fits(trial, store, dense_counted, levels_counted)
        iters = trial.chain().run.fit.iters
        seconds = sum(n * c.run.fit.iters * seconds_per_iter(c, measured) for c, n in needed)
        gpu = [(n * c.run.fit.iters, gpu_seconds_per_iter(c, measured)) for c, n in needed if n]
        out.append(TrialPlan(label, trial.key, trial.levels, sum(n for _, n in needed), iters, seconds,
                             None if any(g is None for _, g in gpu) else sum(k * g for k, g in gpu)))
    return out


def _stored_dirs(trial: TrialConfig, store: TrunkStore) -> list[tuple[str, Path]]:
    """(name, directory) of every level of a DIP trial's chains: the dense level, then the found levels."""
    found, evaluated_on = KINDS.get(trial.kind).chains(trial.typed)
    out = [(f"dense {c.dense_key}", store.dense_dir(c.dense_key)) for c in (found, evaluated_on) if c is not None]
    return out + [(f"chain {found.chain_key} level {lvl}", store.level_dir(found.chain_key, lvl))
                  for lvl in range(1, trial.levels + 1)]


def stored_platforms(exp: Experiment, store: TrunkStore) -> dict[str, list[str]]:
    """{platform label: stored levels} of the sweep's DIP chains, read without touching the store: a sweep
    whose levels come from several platforms is not one platform's result (platforms.py). Kinds without
    DIP chains (gan, classify) are left out; their MLflow runs and report say where they were computed."""
    found: dict[str, dict | None] = {}
    for trial in exp.trials:
        if KINDS.get(trial.kind).estimate is not None:
            continue
        for name, directory in _stored_dirs(trial, store):
            if name not in found and (rec := _peek(record_of(directory))) is not None:
                found[name] = rec.get("platform")
    return summarize(found)


def _peek(path: Path) -> dict | None:
    try:
        rec = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return rec if isinstance(rec, dict) else None


@dataclass(frozen=True)
class WallClock:
    """Hours a sweep takes on ``gpus`` GPUs, and which bound sets them: the total work, the longest trial, or
    the waves (more trials than slots)."""

    gpus: int
    trials_per_gpu: float
    hours: float
    limit: str


def wall_clock(gpu_seconds: Sequence[float], gpus: int, gpu_per_trial: float) -> WallClock:
    """The least wall-clock ``gpus`` GPUs can finish trials taking ``gpu_seconds`` on a whole GPU each, when
    every trial holds ``gpu_per_trial`` of one (Ray packs floor(1 / share) trials on a GPU, and those share its
    throughput: a trial at 0.25 takes 4x its whole-GPU time). Three lower bounds, the largest wins: the total
    work spread over every GPU; the longest trial at its share; and the waves: with S slots, some slot runs
    k + 1 of the k S + 1 longest trials, so it takes at least k + 1 times the (k S + 1)-th longest."""
    if gpus < 1 or gpu_per_trial <= 0:
        raise ValueError(f"need gpus >= 1 and a GPU share > 0, got {gpus} and {gpu_per_trial}")
    share = gpu_per_trial if gpu_per_trial >= 1 else 1 / math.floor(1 / gpu_per_trial + 1e-9)
    slots = math.floor(gpus / share + 1e-9)
    if slots < 1:
        raise ValueError(f"a trial needs {gpu_per_trial} GPUs, more than the {gpus} given")
    durations = sorted((s / share for s in gpu_seconds if s > 0), reverse=True)
    if not durations:
        return WallClock(gpus, 1 / share, 0.0, "no work")
    bounds = {"total work": sum(durations) / slots, "longest trial": durations[0],
              "waves": max((k + 1) * durations[k * slots] for k in range(len(durations[::slots])))}
    limit = max(bounds, key=lambda k: bounds[k])
    return WallClock(gpus, 1 / share, bounds[limit] / 3600, limit)


def gpu_basis() -> dict:
    """Where the GPU hours come from: the calibration table's "cuda" device, or ``GPU_SPEEDUP`` assumed."""
    cuda = calibration.load().get("cuda")
    if cuda is None:
        return {"measured": False, "speedup_assumed": GPU_SPEEDUP,
                "note": f"the CPU figure / {GPU_SPEEDUP:.0f}, assuming a GPU = {GPU_SPEEDUP:.0f} CPU threads, not measured: "
                        f"`python {calibration.BENCHMARK} --devices cuda --merge` on a GPU measures it"}
    return {"measured": True, "device": cuda.name, "date": cuda.measured,
            "note": f"the DIP's iterations per second on a whole {cuda.name}, measured by {calibration.BENCHMARK} on "
                    f"{cuda.measured}"}


def cpu_basis() -> str:
    cpu = calibration.load().get("cpu")
    return "" if cpu is None else (f"the DIP's iterations per second on one thread of {cpu.name}, measured by "
                                   f"{calibration.BENCHMARK} on {cpu.measured}")


def cost_model(kind: str) -> tuple[str, dict]:
    """(CPU basis, GPU basis) of a kind's estimate: its own model, or the DIP calibration table's."""
    own = KINDS.get(kind).cost_model
    return own() if own is not None else (cpu_basis(), gpu_basis())


def trial_gpu_seconds(p: TrialPlan) -> float:
    return p.seconds / GPU_SPEEDUP if p.gpu_seconds is None else p.gpu_seconds


def summary(exp: Experiment, plans: list[TrialPlan], gpus: Sequence[int] = (1, 10, 64)) -> dict:
    share = exp.resources.get("gpu", 0)
    walls = [wall_clock([trial_gpu_seconds(p) for p in plans], n, share).__dict__ for n in gpus] if share else []
    cpu, gpu = cost_model(REPLAY_KINDS.get(exp.kind, exp.kind))  # a replay is priced as the chains it replays
    return {"experiment": exp.name, "profile": exp.profile, "paper": exp.paper, "description": exp.description,
            "trials": len(plans), "fits_needed": sum(p.fits_needed for p in plans),
            "cpu_core_hours": sum(p.seconds for p in plans) / 3600, "cpu_basis": cpu, "gpu_basis": gpu,
            "gpu_hours": sum(trial_gpu_seconds(p) for p in plans) / 3600,
            "wall_clock": walls, "resources": exp.resources, "table": [p.__dict__ for p in plans]}
