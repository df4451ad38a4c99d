"""What a sweep will cost before it runs: the fits still missing from the store, and the hours they take.

Seconds per iteration follow t = a + b * pixels * width^2, fitted to measurements on these machines
(full-width DIP at 64 px, 2 threads: 19 it/s; width 16 at 64 px, 1 thread: ~115 it/s); where the store
has already timed fits (``fits.log``), their measured seconds per iteration replace the model. GPU hours
assume a GPU is ``GPU_SPEEDUP`` times one CPU core at paper scale: an assumption, printed as such.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from .config import ChainConfig
from .errors import ConfigError
from .experiments import Experiment
from .images import resolve
from .priors import PRIORS
from .pruning import METHODS
from .store import TrunkStore
from .trial import KINDS, TrialConfig

A_SECONDS, B_SECONDS = 0.008, 6.65e-10
GPU_SPEEDUP = 40.0


@dataclass
class TrialPlan:
    label: str
    key: str
    levels: int
    fits_needed: int
    iters: int
    seconds: float
    gpu_seconds: float | None = None  # a kind's own GPU estimate (else seconds / GPU_SPEEDUP)


def pixels(image: str, size: int | None, depth: int) -> int:
    with Image.open(resolve(image)) as img:
        w, h = img.size
    if size:
        scale = size / min(w, h)
        w, h = round(w * scale), round(h * scale)
    g = 2**depth
    return (w - w % g) * (h - h % g)


def seconds_per_iter(chain: ChainConfig, measured: dict[str, float]) -> float:
    """Measured for this trunk, or the model: one forward pass per z (a shared z serves every image)."""
    if chain.dense_key in measured:
        return measured[chain.dense_key]
    model, size = chain.run.model, chain.run.problem.size
    width = PRIORS.get(model.kind).cost_width(model.width)
    return sum(A_SECONDS + B_SECONDS * pixels(img, size, model.levels) * width**2
               for img in (chain.images[:1] if chain.shared_z else chain.images))


BYTES_PER_PIXEL_CHANNEL = 100  # DIP fwd+bwd peak, measured 66-95 B per pixel x width (128-256 px), rounded up


def peak_bytes(trial: TrialConfig) -> int:
    """What one step of the trial's fit holds in memory: activations per pixel x width, one forward pass per z
    (kinds without DIP chains, e.g. a generator's latent fit, are not modelled: 0)."""
    if KINDS.get(trial.kind).estimate is not None:
        return 0
    chain = trial.chain()
    model, size = chain.run.model, chain.run.problem.size
    width = PRIORS.get(model.kind).cost_width(model.width)
    images = chain.images[:1] if chain.shared_z else chain.images
    return int(sum(pixels(img, size, model.levels) for img in images) * width * BYTES_PER_PIXEL_CHANNEL)


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


def _measured(store: TrunkStore) -> dict[str, float]:
    out: dict[str, list[float]] = {}
    for entry in store.fit_log():
        if entry.get("seconds") and entry.get("iters"):
            out.setdefault(entry["dense"], []).append(entry["seconds"] / entry["iters"])
    return {k: sorted(v)[len(v) // 2] for k, v in out.items()}


def _found_levels(found: ChainConfig, levels: Sequence[int]) -> range:
    """The source levels a transfer needs fitted: level L's IMP mask is pruned from level L - 1's weights;
    a one-shot method's masks need no fit."""
    return range(1, max(levels)) if METHODS.get(found.method).sequential else range(0)


def _missing_fits(trial: TrialConfig, store: TrunkStore, dense_counted: set[str],
                  levels_counted: set[tuple[str, int]]) -> list[tuple[ChainConfig, int]]:
    """Fits the store lacks for ``trial``, per chain that runs them (the chain whose masks are found, and for an
    evaluation the target they are fitted on); a level shared with an earlier trial counts once."""
    found, evaluated_on = KINDS.get(trial.kind).chains(trial)
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
    measured = _measured(store)
    dense_counted: set[str] = set()
    levels_counted: set[tuple[str, int]] = set()
    out = []
    for trial, label in zip(exp.trials, exp.labels):
        estimate = KINDS.get(trial.kind).estimate
        if estimate is not None:
            fits, seconds, gpu_seconds = estimate(trial, store, dense_counted)
            out.append(TrialPlan(label, trial.key, trial.levels, fits, trial.iters or 0, seconds, gpu_seconds))
            continue
        needed = _missing_fits(trial, store, dense_counted, levels_counted)
        iters = trial.chain().run.fit.iters
        seconds = sum(n * c.run.fit.iters * seconds_per_iter(c, measured) for c, n in needed)
        out.append(TrialPlan(label, trial.key, trial.levels, sum(n for _, n in needed), iters, seconds))
    return out


def summary(exp: Experiment, plans: list[TrialPlan]) -> dict:
    cpu_hours = sum(p.seconds for p in plans) / 3600
    return {"experiment": exp.name, "profile": exp.profile, "paper": exp.paper, "description": exp.description,
            "trials": len(plans), "fits_needed": sum(p.fits_needed for p in plans),
            "cpu_core_hours": cpu_hours,
            "gpu_hours_assumed": sum(p.seconds / GPU_SPEEDUP if p.gpu_seconds is None else p.gpu_seconds
                                     for p in plans) / 3600,
            "gpu_speedup_assumed": GPU_SPEEDUP, "resources": exp.resources,
            "table": [p.__dict__ for p in plans]}
