"""The classification-transfer report (paper Fig. 6, Fig. 7c/f): accuracy vs sparsity of the classification
ticket, random pruning and the transferred denoising LIP; PSNR on denoising of the classification ticket
vs the denoising LIP; and the per-layer densities of both kinds of ticket at matched sparsities."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from . import figures
from .curves import (
    Densities,
    layer_profiles,
    logged_densities,
    panels,
    sparsity_table,
    write_profiles,
)
from .inputs import Inputs, Report
from .stats import given

FIG7_SPARSITIES = (0.36, 0.49, 0.59, 0.83, 0.89, 0.95)  # Fig. 7c/f's classification tickets
MATCH_TOLERANCE = 0.03  # a level farther than this from a target sparsity does not stand for it


def series_label(row: pd.Series) -> str:
    """Where the mask came from: the classification ticket (or random pruning) or a DIP chain's mask
    (the denoising LIP, a random chain), named by its source task."""
    source = given(row, "source_task") or given(row, "source_image") or given(row, "source_multi_images", ())
    method = str(row.get("method"))
    if not source:
        return "classification ticket" if method == "imp" else f"classification {method}"
    task = given(row, "source_task", row.get("task"))
    return f"{task} LIP" if method == "imp" else f"{task} {method}"


def _with_series(frame: pd.DataFrame) -> pd.DataFrame:
    data = frame.dropna(subset=["level"])
    if data.empty:
        return data.assign(series=pd.Series(dtype=str))
    return data.assign(series=data.apply(series_label, axis=1))


def _curves(rep: Report, data: pd.DataFrame, facet: list[str], metric: str, stem: str, title: str) -> list[Path]:
    """One panel per logged facet value, one line per series; the table labels a level by its mean sparsity
    per facet (a DIP mask on the classifier drops the output conv, so series differ by ~0.1% at one level)."""
    if data.empty or metric not in data or data[metric].isna().all():
        return []
    facet = [f for f in facet if f in data]
    path = figures.curves(panels(data, facet, ["series"], metric, named=False), metric, rep.out / f"{stem}.png", title)
    return [path, *sparsity_table(rep.out, data, [*facet, "series"], metric, stem, label_by=facet, count_seeds=False)]


def write_classification(x: Inputs) -> None:
    """The report part: every trial of the sweep; layer densities from each level's logged record."""
    classification_report(x.rep, x.frame, logged_densities(x.runs))


def classification_report(rep: Report, frame: pd.DataFrame, densities: Densities, psnr: str = "psnr_ema") -> None:
    """Fig. 6's two panels (accuracy; PSNR on the restoration target) and Fig. 7c/f's layer profiles."""
    data = _with_series(frame)
    kind = data["kind"] if "kind" in data else pd.Series("", index=data.index)
    files = _curves(rep, data[kind == "classify"], ["data"], "accuracy", "accuracy",
                    "test accuracy vs sparsity (Fig. 6a/c)")
    rep.add("Classification accuracy", "Test accuracy per level of the classification ticket, random pruning at "
            "the same counts and DIP chains' masks (the denoising LIP, a random chain) trained on the same set "
            "from the same theta_0; mean ± 1 std over seeds, dashed: the dense classifier.",
            files)
    files = _curves(rep, data[kind == "classify_transfer"], ["data", "image", "task"], psnr, "transfer_psnr",
                    "restoration PSNR vs sparsity (Fig. 6b/d)")
    rep.add("Classification tickets on restoration", f"{psnr} per level of the classification ticket's masks "
            "(with a dense output conv) fitted as a DIP, next to the denoising LIP; dashed: the dense DIP.", files)
    write_layers(rep, data, densities)


def _profiles(data: pd.DataFrame, densities: Densities) -> tuple[list[dict], list[dict]]:
    """Per series, its first run (lowest seed) at each Fig. 7 sparsity it reached within the tolerance."""
    picked = data[data["method"] == "imp"].sort_values(["seed", "level"]).drop_duplicates("series")
    return layer_profiles(picked, data[data["level"] > 0], "series", FIG7_SPARSITIES, densities, MATCH_TOLERANCE)


def write_layers(rep: Report, data: pd.DataFrame, densities: Densities) -> None:
    """Fig. 7c/f: per-layer density of the classification ticket and the denoising LIP, layers in forward
    order (the LIP keeps early layers; LTH on classification keeps the middle ones, the paper reports)."""
    write_profiles(rep, _profiles(data, densities) if not data.empty else ([], []),
                   "per-layer density: classification tickets vs the denoising LIP (Fig. 7c/f)",
                   "Per-layer density of the classification ticket and the denoising LIP (first seed) at matched "
                   "sparsities; layerwise_summary.csv: mean density of the first vs last third of the layers "
                   "(ratio > 1: early layers kept denser).", "no pruned level near 36/49/59/83/89/95% logged yet.")
