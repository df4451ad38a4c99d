"""What one DIP step costs: seconds (per CPU thread, per GPU) and peak memory of a chain's fit.

Seconds per iteration come from ``lipsweep.fitting.calibration``: a model of pixels and width fitted to the it/s
``benchmarks/calibrate.py`` measured per device (CPU on one thread, as trials run; a whole GPU where measured),
exact at the measured sizes and widths. Where the store has already timed fits (``fits.log``), their seconds
per iteration replace the CPU model, and scale the GPU's alike. Without GPU measurements, GPU hours assume a
GPU does the work of ``GPU_SPEEDUP`` CPU threads: an assumption, printed as such. A fit that ends at its
confirmed detection (``es_stop``, issue 29) runs the fraction of its budget the store's fits of its kind ran
until theirs (``measured_stops``). One owner for every kind that prices DIP fits (``experiments/plan.py``, the
classification kinds).
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from PIL import Image

from lipsweep.core.errors import ConfigError
from lipsweep.core.paths import config_of, record_of
from lipsweep.fitting import calibration
from lipsweep.fitting.config import LATER_FIT_DEFAULTS
from lipsweep.fitting.early_stop import NONE
from lipsweep.lottery.chain import ChainConfig
from lipsweep.priors import PRIORS
from lipsweep.problems.images import resolve

if TYPE_CHECKING:
    from lipsweep.lottery.store import TrunkStore

GPU_SPEEDUP = 40.0  # assumed where the calibration table has no "cuda" device
BYTES_PER_PIXEL_CHANNEL = 100  # DIP fwd+bwd peak, measured 66-95 B per pixel x width (128-256 px), rounded up


def pixels(image: str, size: int | None, depth: int) -> int:
    with Image.open(resolve(image)) as img:
        w, h = img.size
    if size:
        scale = size / min(w, h)
        w, h = round(w * scale), round(h * scale)
    g = 2**depth
    return (w - w % g) * (h - h % g)


def model_seconds(chain: ChainConfig, device: str) -> float | None:
    """The calibrated seconds of one step on ``device``, one forward pass per z (a shared z serves every
    image); None where the table has not measured the device."""
    model, size = chain.run.model, chain.run.problem.size
    width = PRIORS.get(model.kind).cost_width(model.width)
    per = [calibration.seconds_per_iter(device, pixels(img, size, model.levels), width)
           for img in (chain.images[:1] if chain.shared_z else chain.images)]
    return None if None in per else sum(per)


def seconds_per_iter(chain: ChainConfig, measured: dict[str, float]) -> float:
    """CPU seconds (one thread) of one step: measured for this trunk, or the calibrated model."""
    if chain.dense_key in measured:
        return measured[chain.dense_key]
    seconds = model_seconds(chain, "cpu")
    if seconds is None:
        raise ConfigError("calibration", f"{calibration.TABLE} has no CPU measurements: run "
                                         f"`python {calibration.BENCHMARK}`")
    return seconds


def gpu_seconds_per_iter(chain: ChainConfig, measured: dict[str, float]) -> float | None:
    """Seconds of one step on a whole GPU, where the table measured one (a trunk the store timed scales it by
    its measured / modelled CPU time); None otherwise."""
    gpu = model_seconds(chain, "cuda")
    if gpu is None or chain.dense_key not in measured:
        return gpu
    return gpu * measured[chain.dense_key] / seconds_per_iter(chain, {})


def chain_peak_bytes(chain: ChainConfig) -> int:
    """What one step of the chain's fit holds in memory: activations per pixel x width, one pass per z."""
    model, size = chain.run.model, chain.run.problem.size
    width = PRIORS.get(model.kind).cost_width(model.width)
    images = chain.images[:1] if chain.shared_z else chain.images
    return int(sum(pixels(img, size, model.levels) for img in images) * width * BYTES_PER_PIXEL_CHANNEL)


def measured_seconds(store: TrunkStore) -> dict[str, float]:
    """Seconds per iteration the store's ``fits.log`` timed, per dense key (the median of its fits)."""
    out: dict[str, list[float]] = {}
    for entry in store.fit_log():
        if entry.get("seconds") and entry.get("iters"):
            out.setdefault(entry["dense"], []).append(entry["seconds"] / entry["iters"])
    return {k: sorted(v)[len(v) // 2] for k, v in out.items()}


@dataclass(frozen=True)
class MeasuredStops:
    """Where a detector confirmed its stop on the stored fits of one group: the mean fraction of the budget run
    until then (1 for a fit it never confirmed in: that fit runs its budget), over ``fits`` fits, ``confirmed``
    of which confirmed."""

    fraction: float
    fits: int
    confirmed: int


def stop_group(problem: Mapping, model: Mapping, fit: Mapping) -> str | None:
    """What predicts where a detector stops a fit: task, prior, width, size, budget and the detector's settings,
    read from a stored payload (later fields left out at their defaults) or a config's ``asdict`` alike; None
    without a detector."""
    es = {k: fit.get(k, LATER_FIT_DEFAULTS[k]) for k in ("early_stop", "es_window", "es_patience", "es_alpha")}
    if es["early_stop"] == NONE:
        return None
    size = f"{problem['size']} px" if problem.get("size") else "full size"
    return (f"{problem['task']} {model['kind']} width {model['width']} {size} {fit['iters']} it, "
            f"{es['early_stop']} window {es['es_window']} patience {es['es_patience']} alpha {es['es_alpha']:g}")


def chain_stop_group(chain: ChainConfig) -> str | None:
    run = chain.run
    return stop_group(asdict(run.problem), asdict(run.model), asdict(run.fit))


def measured_stops(store: TrunkStore) -> dict[str, MeasuredStops]:
    """Per ``stop_group``, where the detectors of the store's fits confirmed (``es_iters_run`` of the budget); a
    fit with ``es_stop`` false runs on but records where it would have ended, so both count. Reads JSON only."""
    found: dict[str, list[tuple[float, bool]]] = {}
    for group, record in _stored_detections(store):
        if group is not None:
            found.setdefault(group, []).append(stop_of(record))
    return {g: MeasuredStops(sum(f for f, _ in v) / len(v), len(v), sum(c for _, c in v)) for g, v in found.items()}


def stop_of(record: Mapping) -> tuple[float, bool]:
    """The fraction of its budget a level's fit runs until its detection is confirmed, and whether it was: a
    fit of several images (Algorithm 2) ends once every image's detector has confirmed."""
    shown = record.get("per_image") or [record]
    budget = shown[0]["es_iters_run"] + shown[0]["es_saved"]  # fitting/early_stop.scores: saved = budget - run
    run = max(m["es_iters_run"] for m in shown)
    return run / budget, all(m["es_confirmed"] == 1 for m in shown)


def _stored_detections(store: TrunkStore) -> Iterator[tuple[str | None, dict]]:
    """(group, record) of every stored DIP level fitted with a detector: dense runs, chain levels (their dense
    run's group, its config read once) and evaluations (their target's)."""
    dense: dict[str, str | None] = {}
    for directory in _children(store.paths.dense("")):
        if _detected(rec := peek_json(record_of(directory))):
            yield _dense_group(store, directory.name, dense), rec
    for path in store.paths.chain_configs():
        key = (peek_json(path) or {}).get("dense")
        for record in store.paths.finished_levels(path.parent.name):
            if _detected(rec := peek_json(record)):
                yield _dense_group(store, key, dense), rec
    for directory in _children(store.paths.evaluation("")):
        if _detected(rec := peek_json(record_of(directory))):
            yield _payload_group((peek_json(config_of(directory)) or {}).get("target")), rec


def _dense_group(store: TrunkStore, key: str | None, cache: dict[str, str | None]) -> str | None:
    if key is not None and key not in cache:
        cache[key] = _payload_group(peek_json(config_of(store.paths.dense(key))))
    return cache.get(key) if key is not None else None


def _payload_group(payload: Mapping | None) -> str | None:
    """A dense payload's group (None for one that is not a DIP fit's, or unreadable)."""
    try:
        return stop_group(payload["problem"], payload["model"], payload["fit"])
    except (KeyError, TypeError):
        return None


def _detected(record: dict | None) -> bool:
    return record is not None and all(k in record for k in ("es_iters_run", "es_saved", "es_confirmed"))


def _children(directory: Path) -> list[Path]:
    return sorted(p for p in directory.iterdir() if p.is_dir()) if directory.is_dir() else []


def peek_json(path: Path) -> dict | None:
    """A JSON object read without touching the store (``show`` only reads: a damaged file stays in place)."""
    try:
        found = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return found if isinstance(found, dict) else None
