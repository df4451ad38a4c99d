"""What a sweep will cost before it runs: the fits still missing from the store, the hours they take, and the
wall-clock on N GPUs. A DIP step's cost is ``lottery/cost.py``'s; kinds without DIP chains price their own
work (``TrialKind.estimate``); this module adds them up. A fit with ``es_stop`` runs the fraction of its budget
the store measured on fits of its kind (``cost.measured_stops``; issue 29), else its full budget.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from lipsweep.core.errors import ConfigError
from lipsweep.core.paths import record_of
from lipsweep.core.platforms import summarize
from lipsweep.experiments.spec import REPLAY_KINDS, Experiment
from lipsweep.fitting import calibration
from lipsweep.fitting.early_stop import NONE
from lipsweep.kinds.base import KINDS, TrialConfig
from lipsweep.lottery.chain import ChainConfig
from lipsweep.lottery.cost import (
    GPU_SPEEDUP,
    MeasuredStops,
    chain_peak_bytes,
    chain_stop_group,
    gpu_seconds_per_iter,
    measured_seconds,
    measured_stops,
    peek_json,
    seconds_per_iter,
)
from lipsweep.lottery.store import TrunkStore
from lipsweep.pruning.methods import METHODS


@dataclass(frozen=True)
class EsPlan:
    """A trial with a detector: whether its fits end at the confirmed detection (``es_stop``); the fits it needs
    with ``es_stop`` on (``es_stop`` is part of a fit's key: switched on, stored fits without it run again), how
    many of those a stored measurement of their kind prices (the rest run their full budget), their CPU seconds
    so priced and at their full budget, and the measurements used (group, ``MeasuredStops``)."""

    es_stop: bool
    fits: int
    measured: int
    full: int
    seconds: float
    seconds_full: float
    used: tuple[tuple[str, MeasuredStops], ...]


@dataclass
class TrialPlan:
    label: str
    key: str
    levels: int
    fits_needed: int
    iters: int
    seconds: float
    gpu_seconds: float | None = None  # on a whole GPU: calibrated or a kind's own (None: seconds / GPU_SPEEDUP)
    early_stop: EsPlan | None = None  # a trial with a detector (issue 29)


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
    measured, stops = measured_seconds(store), measured_stops(store)
    dense_counted: set[str] = set()
    levels_counted: set[tuple[str, int]] = set()
    counted_on: tuple[set[str], set[tuple[str, int]]] = (set(), set())  # the same sweep with es_stop on everywhere
    out = []
    for trial, label in zip(exp.trials, exp.labels):
        estimate = KINDS.get(trial.kind).estimate
        if estimate is not None:
            fits, seconds, gpu_seconds = estimate(trial.typed, store, dense_counted)
            out.append(TrialPlan(label, trial.key, trial.levels, fits, trial.iters or 0, seconds, gpu_seconds))
            continue
        needed = _missing_fits(trial, store, dense_counted, levels_counted)
        es_plan = _es_plan(trial, store, counted_on, stops, measured)
        iters = _priced_iters(needed, stops, es_plan is not None and es_plan.es_stop)
        gpu = [(k, gpu_seconds_per_iter(c, measured)) for c, k in iters if k]
        out.append(TrialPlan(label, trial.key, trial.levels, sum(n for _, n in needed), trial.chain().run.fit.iters,
                             _cpu_seconds(iters, measured),
                             None if any(g is None for _, g in gpu) else sum(k * g for k, g in gpu), es_plan))
    return out


def _priced_iters(needed: Sequence[tuple[ChainConfig, int]], stops: Mapping[str, MeasuredStops],
                  es_stop: bool) -> list[tuple[ChainConfig, float]]:
    """(chain, iterations its needed fits run): each its full budget, or with ``es_stop`` the fraction its
    group's stored fits measured (the full budget where the store holds no fit of its kind)."""
    return [(c, n * c.run.fit.iters * (_fraction(c, stops) if es_stop else 1.0)) for c, n in needed]


def _fraction(chain: ChainConfig, stops: Mapping[str, MeasuredStops]) -> float:
    found = stops.get(chain_stop_group(chain) or "")
    return 1.0 if found is None else found.fraction


def _cpu_seconds(iters: Sequence[tuple[ChainConfig, float]], measured: Mapping[str, float]) -> float:
    return sum(k * seconds_per_iter(c, measured) for c, k in iters)


def _es_plan(trial: TrialConfig, store: TrunkStore, counted_on: tuple[set[str], set[tuple[str, int]]],
             stops: Mapping[str, MeasuredStops], measured: Mapping[str, float]) -> EsPlan | None:
    """A trial's fits under early stopping, priced with ``es_stop`` on and at the full budget (None: no detector)."""
    if trial.early_stop == NONE:
        return None
    on = _missing_fits(trial if trial.es_stop else replace(trial, es_stop=True), store, *counted_on)
    groups = [(n, chain_stop_group(c)) for c, n in on]
    return EsPlan(es_stop=trial.es_stop, fits=sum(n for n, _ in groups),
                  measured=sum(n for n, g in groups if g in stops), full=sum(n for n, g in groups if g not in stops),
                  seconds=_cpu_seconds(_priced_iters(on, stops, True), measured),
                  seconds_full=_cpu_seconds(_priced_iters(on, stops, False), measured),
                  used=tuple({g: stops[g] for n, g in groups if n and g in stops}.items()))


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
            if name not in found and (rec := peek_json(record_of(directory))) is not None:
                found[name] = rec.get("platform")
    return summarize(found)


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
            "wall_clock": walls, "resources": exp.resources, "early_stopping": early_stopping(plans),
            "table": [asdict(p) for p in plans]}


def early_stopping(plans: Sequence[TrialPlan]) -> dict | None:
    """What early stopping does to the sweep's cost (issue 29), for its trials with a detector and ``es_stop`` on,
    and apart for those with it off (what switching it on would save). None: no trial has a detector."""
    es = [p for p in plans if p.early_stop is not None]
    if not es:
        return None
    return {"es_stop_on": _es_part([p for p in es if p.early_stop.es_stop]),
            "es_stop_off": _es_part([p for p in es if not p.early_stop.es_stop])}


def _es_part(plans: Sequence[TrialPlan]) -> dict | None:
    """Trials' fits with ``es_stop`` on: how many a measurement prices, their core-hours so priced and at the full
    budget, how many of them are stored without ``es_stop`` (those run again), and the stored fits measured (each
    group once, its mean weighted by its fits)."""
    if not plans:
        return None
    es = [p.early_stop for p in plans if p.early_stop is not None]
    used = {g: m for e in es for g, m in e.used}
    stored = sum(m.fits for m in used.values())
    fits = sum(e.fits for e in es)
    return {"fits": fits, "measured": sum(e.measured for e in es), "full": sum(e.full for e in es),
            "run_again": max(0, fits - sum(p.fits_needed for p in plans)),
            "cpu_core_hours": sum(e.seconds for e in es) / 3600,
            "cpu_core_hours_full_budget": sum(e.seconds_full for e in es) / 3600, "stored_fits": stored,
            "stored_confirmed": sum(m.confirmed for m in used.values()),
            "mean_fraction": sum(m.fraction * m.fits for m in used.values()) / stored if stored else None,
            "groups": {g: asdict(m) for g, m in used.items()}}
