"""What one DIP step costs: seconds (per CPU thread, per GPU) and peak memory of a chain's fit.

Seconds per iteration come from ``lipsweep.fitting.calibration``: a model of pixels and width fitted to the it/s
``benchmarks/calibrate.py`` measured per device (CPU on one thread, as trials run; a whole GPU where measured),
exact at the measured sizes and widths. Where the store has already timed fits (``fits.log``), their seconds
per iteration replace the CPU model, and scale the GPU's alike. Without GPU measurements, GPU hours assume a
GPU does the work of ``GPU_SPEEDUP`` CPU threads: an assumption, printed as such. One owner for every kind
that prices DIP fits (``experiments/plan.py``, the classification kinds).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from PIL import Image

from lipsweep.core.errors import ConfigError
from lipsweep.fitting import calibration
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
