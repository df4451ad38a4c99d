"""One record per level: the single schema the store writes, Tune reports, MLflow logs and analysis reads.

A ``LevelRecord`` is frozen; what a trial, a sweep or a node adds (the stop rule's verdict, the mask's
source, the node) goes in with ``dataclasses.replace``. ``to_dict`` is the on-disk ``level.json`` and the
JSON Tune carries; optional fields that are unset are left out, so old stores read back unchanged.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields

import numpy as np

# psnr_peak, psnr_ema_peak, ypsnr_peak and ypsnr_ema_peak are oracles: chosen over iterations with the
# clean image. psnr_ema_peak is what the paper reports; psnr_ema (the last EMA output) is obtainable.
# psnr_posterior / ssim_posterior: SGLD-DIP's posterior mean after the burn-in (Fig. 16), obtainable.
METRIC_KEYS = ("psnr_final", "psnr_ema", "psnr_peak", "peak_iter", "psnr_ema_peak", "ema_peak_iter", "ssim_final",
               "ssim_ema", "psnr_observation", "ypsnr_final", "ypsnr_ema", "ypsnr_peak", "ypsnr_ema_peak", "ypsnr_observation",
               "psnr_posterior", "ssim_posterior", "posterior_std_max", "empty_layers", "clean_fit_psnr_ema",
               "clean_fit_psnr_ema_peak", *("es_iter", "psnr_es", "ypsnr_es", "ssim_es", "es_gap", "es_confirmed",
                                            "es_iters_run", "es_saved", "es_peak_width"))
# es_*: what an early-stopping detector returns without the clean image (fitting/early_stop.py, issue 29):
# psnr_es is obtainable; es_gap = the oracle peak of the same output minus psnr_es
# clean_fit_*: with imp_target clean, the IMP fit's own PSNR while it fits the clean image, what the reference's
# rewind script reports (Rewind_IMP.py:197-228, best_psnr_gt): fitting capacity, not restoration (issue 27)
CLEAN_FIT = {"psnr_ema": "clean_fit_psnr_ema", "psnr_ema_peak": "clean_fit_psnr_ema_peak"}
COUNT_KEYS = ("params", "nonzero_params")  # the whole network's parameters, and those not pruned (Table 3)
# A generator's latent fit (kind 'gan'): per-pixel MSE in [-1, 1] (Table 1's metric), PSNR and SSIM of the
# restart chosen by the measurement loss, and the *_oracle restart chosen with the clean image.
GAN_METRIC_KEYS = ("mse", "psnr", "ssim", "loss", "mse_oracle", "psnr_oracle", "ssim_oracle", "mse_observation")
# A mask trained to classify (kinds 'classify'; Fig. 6): test accuracy and loss, training-split accuracy.
CLASSIFY_METRIC_KEYS = ("accuracy", "train_accuracy", "loss_test")
NOT_METRICS = frozenset({"level", "rewind", "rewind_iter"})  # numbers that are axes or steps, not results


@dataclass(frozen=True)
class LevelRecord:
    """A level's mask (counts, hash, per-layer densities), its IMP loss and the reported metrics."""

    level: int
    method: str
    rewind: float
    rewind_iter: int
    density: float
    sparsity: float
    kept: int
    total: int
    mask_hash: str
    layer_densities: Mapping[str, float]
    imp_loss: float
    seconds: float
    metrics: Mapping[str, float] = field(default_factory=dict)
    per_image: tuple[Mapping[str, object], ...] | None = None
    where: str | None = None  # the level's directory, relative to the store root
    source: Mapping[str, object] | None = None  # evaluation: the transferred mask's provenance
    stop_fired_at: int | None = None
    stop_chosen: int | None = None
    source_mask: str | None = None  # evaluation: CHAIN_KEY/LEVEL of the transferred mask
    node_id: str | None = None  # the Ray node that reported it (it may have loaded it from the store)
    platform: Mapping[str, object] | None = None  # where it was computed (platforms.Platform.as_dict())

    def to_dict(self) -> dict:
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "metrics"}
        out = {k: v for k, v in out.items() if v is not None}
        if self.platform is not None:
            out["platform"] = dict(self.platform)
        if self.per_image is not None:
            out["per_image"] = [dict(p) for p in self.per_image]
        return {**out, "layer_densities": dict(self.layer_densities), **self.metrics}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), default=float)

    @classmethod
    def from_dict(cls, data: Mapping[str, object]) -> LevelRecord:
        names = {f.name for f in fields(cls)} - {"metrics"}
        known = {k: v for k, v in data.items() if k in names}
        if known.get("per_image") is not None:
            known["per_image"] = tuple(known["per_image"])
        return cls(**known, metrics={k: v for k, v in data.items() if k not in names})

    def __getitem__(self, key: str) -> object:
        """Read any field or metric by name (analysis and the stop search pick metrics by name)."""
        return self.to_dict()[key]

    def get(self, key: str, default: object = None) -> object:
        return self.to_dict().get(key, default)

    def numbers(self) -> dict[str, float]:
        return numbers_of(self.to_dict())


def numbers_of(rec: Mapping[str, object]) -> dict[str, float]:
    """The numeric per-level values of a record (MLflow metrics at step = level); per-image ones as
    ``psnr_final.<image>``. Also serves the summary records of the stop-rule search."""
    out = {k: float(v) for k, v in rec.items()
           if isinstance(v, (int, float)) and not isinstance(v, bool) and k not in NOT_METRICS}
    for item in rec.get("per_image") or ():
        name = str(item["image"]).replace("/", "_")
        out.update({f"{k}.{name}": float(v) for k, v in item.items() if k != "image"})
    return out


def _mean(values: Sequence[float]) -> float:
    return float(np.mean(values))


def reported_metrics(shown: Sequence[Mapping[str, float]]) -> dict[str, float]:
    """The metrics of a level: each METRIC_KEYS value, averaged over images (Algorithm 2 fits several)."""
    return {k: _mean([m[k] for m in shown]) for k in METRIC_KEYS if k in shown[0]}


def per_image(images: Sequence[str], shown: Sequence[Mapping[str, float]]) -> tuple[dict, ...] | None:
    if len(shown) < 2:
        return None
    return tuple({"image": img, **{k: m[k] for k in METRIC_KEYS if k in m}} for img, m in zip(images, shown))


def within_delta(curve: Sequence[tuple[float, float]], delta: float, higher: bool = True) -> tuple[float, float] | None:
    """(sparsity, value) of the sparsest level whose metric is within ``delta`` of the dense level's (the
    paper's "sparsest subnetwork that matches dense"); ``curve`` holds (sparsity, value) with dense first."""
    if not curve or curve[0][1] != curve[0][1]:
        return None
    dense = curve[0][1]
    ok = [(s, v) for s, v in curve if v == v and (v >= dense - delta if higher else v <= dense + delta)]
    return max(ok)


def axis_summary(trials: Mapping[str, Mapping[str, object]], curves: Mapping[str, Sequence[tuple[float, float]]],
                 metric: str, delta: float, higher: bool = True) -> dict[str, float]:
    """The sweep run's summary metrics: for each value of each field that varies across its trials (seeds
    averaged), the mean sparsity within ``delta`` of dense and the metric there, so the runs table reads
    without expanding children: ``within_delta/<field>_<value>/sparsity`` and ``.../<metric>``."""
    best = {k: b for k, c in curves.items() if (b := within_delta(c, delta, higher)) is not None}
    fields_ = sorted({f for t in trials.values() for f in t} - {"seed"})
    groups: dict[str, list[str]] = {"all": list(best)}
    for f in fields_:
        values = {json.dumps(t.get(f), default=str): t.get(f) for t in trials.values()}
        if len(values) < 2:
            continue
        for text, value in values.items():
            name = "".join(c if c.isalnum() or c in "_-. /:" else "_" for c in f"{f}_{value}")
            groups[name] = [k for k in best if json.dumps(trials[k].get(f), default=str) == text]
    out: dict[str, float] = {}
    for name, keys in groups.items():
        if keys:
            out[f"within_delta/{name}/sparsity"] = _mean([best[k][0] for k in keys])
            out[f"within_delta/{name}/{metric}"] = _mean([best[k][1] for k in keys])
    return out
