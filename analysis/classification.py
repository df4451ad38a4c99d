"""The classification-transfer report (paper Fig. 6, Fig. 7c/f): accuracy vs sparsity of the classification
ticket, random pruning and the transferred denoising LIP; PSNR on denoising of the classification ticket
vs the denoising LIP; and the per-layer densities of both kinds of ticket at matched sparsities."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from ..paths import RECORD, artifact
from . import figures
from .stats import curve_stats, forward_order, given, layer_summary, markdown, mean_std, nearest_level

FIG7_SPARSITIES = (0.36, 0.49, 0.59, 0.83, 0.89, 0.95)  # Fig. 7c/f's classification tickets
MATCH_TOLERANCE = 0.03  # a level farther than this from a target sparsity does not stand for it
if TYPE_CHECKING:
    from .report import Inputs

Densities = Callable[[str, int], "dict[str, float] | None"]  # (run id, level) -> the mask's layer densities


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


def _panels(data: pd.DataFrame, facet: list[str], metric: str) -> dict[str, dict[str, pd.DataFrame]]:
    stats = curve_stats(data, [*facet, "series"], metric)
    panels: dict[str, dict[str, pd.DataFrame]] = {}
    for keys, part in stats.groupby(facet, dropna=False) if facet else [((), stats)]:  # no facet logged: one panel
        keys = keys if isinstance(keys, tuple) else (keys,)
        name = ", ".join(f"{k}={v}" for k, v in zip(facet, keys)) or "all"
        panels[name] = {str(s): t for s, t in part.groupby("series")}
    return panels


def _table(out: Path, data: pd.DataFrame, facet: list[str], metric: str, stem: str) -> list[Path]:
    """Rows facet x series, columns level (labelled by its mean sparsity: a DIP mask on the classifier drops
    the output conv, so the same level differs by ~0.1% between series), cells mean ± std over seeds."""
    keys = [*facet, "series"]
    data = data.assign(sparsity_pct=(data.groupby([*facet, "level"])["sparsity"].transform("mean") * 100).round(1))
    table = data.groupby([*keys, "sparsity_pct"])[metric].apply(mean_std).unstack("sparsity_pct")
    table.columns = [f"{c:.1f}%" for c in table.columns]
    table = table.fillna("missing")
    table.to_csv(out / f"{stem}.csv")
    (out / f"{stem}.md").write_text(markdown(table))
    return [out / f"{stem}.md", out / f"{stem}.csv"]


def _curves(rep, data: pd.DataFrame, facet: list[str], metric: str, stem: str, title: str) -> list[Path]:
    if data.empty or metric not in data or data[metric].isna().all():
        return []
    facet = [f for f in facet if f in data]
    path = figures.curves(_panels(data, facet, metric), metric, rep.out / f"{stem}.png", title)
    return [path, *_table(rep.out, data, facet, metric, stem)]


def write_classification(x: Inputs) -> None:
    """The report part: every trial of the sweep; layer densities from each level's logged record."""
    def densities(run_id: str, level: int) -> dict[str, float] | None:
        return (x.runs.artifact_json(run_id, artifact(level, RECORD)) or {}).get("layer_densities")

    classification_report(x.rep, x.frame, densities)


def classification_report(rep, frame: pd.DataFrame, densities: Densities, psnr: str = "psnr_ema") -> None:
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
    """Per series (the first run of each: lowest seed), the layer densities at each Fig. 7 sparsity reached."""
    rows, summary = [], []
    picked = data[data["method"] == "imp"].sort_values(["seed", "level"]).drop_duplicates("series")
    for _, run in picked.iterrows():
        one = data[data["run_id"] == run["run_id"]]
        for target in FIG7_SPARSITIES:
            at = nearest_level(one[one["level"] > 0], target)
            if at.empty or abs(float(at["sparsity"].iloc[0]) - target) > MATCH_TOLERANCE:
                continue
            dens = densities(str(run["run_id"]), int(at["level"].iloc[0]))
            if not dens:
                continue
            sparsity = float(at["sparsity"].iloc[0])
            rows += [{"method": run["series"], "target_sparsity": target, "sparsity": sparsity, "layer": layer,
                      "density": dens[layer]} for layer in forward_order(list(dens))]
            summary.append({"method": run["series"], "target_sparsity": target, "sparsity": sparsity,
                            **layer_summary(dens)})
    return rows, summary


def write_layers(rep, data: pd.DataFrame, densities: Densities) -> None:
    """Fig. 7c/f: per-layer density of the classification ticket and the denoising LIP, layers in forward
    order (the LIP keeps early layers; LTH on classification keeps the middle ones, the paper reports)."""
    rows, summary = _profiles(data, densities) if not data.empty else ([], [])
    if not rows:
        rep.add("Layer-wise sparsity", "no pruned level near 36/49/59/83/89/95% logged yet.", [])
        return
    out = rep.out
    pd.DataFrame(rows).to_csv(out / "layerwise.csv", index=False)
    pd.DataFrame(summary).to_csv(out / "layerwise_summary.csv", index=False)
    path = figures.layerwise(pd.DataFrame(rows), out / "layerwise.png",
                             "per-layer density: classification tickets vs the denoising LIP (Fig. 7c/f)")
    rep.add("Layer-wise sparsity", "Per-layer density of the classification ticket and the denoising LIP (first "
            "seed) at matched sparsities; layerwise_summary.csv: mean density of the first vs last third of the "
            "layers (ratio > 1: early layers kept denser).",
            [path, out / "layerwise.csv", out / "layerwise_summary.csv"])
