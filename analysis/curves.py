"""Quality vs sparsity and per-layer density, written once for every report: panels of seed-band curves,
tables with one column per sparsity, and the layer profiles of masks at matched sparsities. The general
report and the classification report use these with their own series, targets and words."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from lipsweep.core.paths import RECORD, artifact

from . import figures
from .inputs import Recipe, Report
from .stats import (
    MATCHED_SPARSITIES,
    curve_stats,
    forward_order,
    layer_summary,
    markdown,
    mean_std,
    nearest_level,
)

if TYPE_CHECKING:
    from .runs import Runs

Densities = Callable[[str, int], "dict[str, float] | None"]  # (run id, level) -> the mask's layer densities
Panels = dict[str, dict[str, pd.DataFrame]]  # panel title -> line label -> curve_stats rows


def _label(columns: Sequence[str], keys: object, named: bool = True) -> str:
    keys = keys if isinstance(keys, tuple) else (keys,)
    return ", ".join(f"{c}={v}" if named else str(v) for c, v in zip(columns, keys))


def panels(frame: pd.DataFrame, facet: list[str], series: list[str], metric: str, named: bool = True) -> Panels:
    """One panel per facet value ("all" without a facet), one line per series value; lines are labelled
    "key=value", or by the value alone where the series column already holds a label (``named=False``)."""
    stats = curve_stats(frame, [*facet, *series], metric)
    groups = stats.groupby(facet, dropna=False) if facet else [((), stats)]
    return {_label(facet, fkeys) or "all": {_label(series, skeys, named): t
                                            for skeys, t in part.groupby(series, dropna=False)}
            for fkeys, part in groups}


def recipe_panels(frame: pd.DataFrame, recipe: Recipe, metric: str) -> Panels:
    """The recipe's facets and series, those the sweep logged."""
    return panels(frame, [f for f in recipe.facet if f in frame], [s for s in recipe.series if s in frame], metric)


def sparsity_table(out: Path, data: pd.DataFrame, keys: list[str], metric: str, stem: str,
                   label_by: list[str] | None = None, count_seeds: bool = True) -> list[Path]:
    """Rows ``keys``, one column per level labelled by its mean sparsity over ``label_by`` (default ``keys``: a
    DIP mask on the classifier drops the output conv, so there a level's sparsity differs by series), cells
    mean ± std over seeds; with ``count_seeds`` a cell with fewer seeds than the fullest says so."""
    label_by = keys if label_by is None else label_by
    data = data.assign(sparsity_pct=(data.groupby([*label_by, "level"])["sparsity"].transform("mean") * 100).round(1))
    seeds = int(data.groupby([*keys, "level"])[metric].count().max()) if count_seeds else None
    table = data.groupby([*keys, "sparsity_pct"])[metric].apply(lambda v: mean_std(v, seeds)).unstack("sparsity_pct")
    table.columns = [f"{c:.1f}%" for c in table.columns]
    table = table.fillna("missing")
    table.to_csv(out / f"{stem}.csv")
    (out / f"{stem}.md").write_text(markdown(table))
    return [out / f"{stem}.md", out / f"{stem}.csv"]


def write_curves(rep: Report, frame: pd.DataFrame, recipe: Recipe, name: str, metric: str) -> None:
    files = []
    for m in dict.fromkeys((metric, "ssim_final", "ssim")):
        if m in frame and frame[m].notna().any():
            path = rep.out / f"curves_{m}.png"
            files.append(figures.curves(recipe_panels(frame, recipe, m), m, path, f"{name}: {m} vs sparsity"))
            stats = curve_stats(frame, [k for k in (*recipe.facet, *recipe.series) if k in frame], m)
            stats.to_csv(rep.out / f"curves_{m}.csv", index=False)
            files.append(rep.out / f"curves_{m}.csv")
    rep.add("Sparsity vs quality", f"{metric} and SSIM per IMP level, one line per "
            f"{'/'.join(s for s in recipe.series if s in frame)}, mean ± 1 std over seeds; dashed: the dense "
            "network.", files)


def write_table(rep: Report, frame: pd.DataFrame, recipe: Recipe, metric: str) -> None:
    """The paper's table layout: rows = facet x series (e.g. image, task, method), columns = sparsity, cells =
    mean ± std over seeds. Every facet the recipe declares is a row key, so images and tasks never pool.
    The obtainable final-EMA PSNR and the paper's oracle EMA peak each get a table where both exist."""
    data = frame.dropna(subset=["level"])
    keys = [k for k in (*recipe.facet, *recipe.series) if k in data]
    files = sparsity_table(rep.out, data, keys, metric, "table")
    for other in ("psnr_ema", "psnr_ema_peak", "mse_oracle"):
        if other != metric and other in data and data[other].notna().any():
            files += sparsity_table(rep.out, data, keys, other, f"table_{other}")
    rep.add("Table", f"{metric} per sparsity, mean ± std over seeds (and images where the recipe pools them), "
            f"one row per {' x '.join(keys)} (the layout of the paper's Tables 1/2/4); table_psnr_ema* holds the "
            "other of the obtainable final EMA PSNR and the paper's oracle EMA peak, table_mse_oracle a "
            "generator's restart chosen with the clean image.", files)


def write_layerwise(rep: Report, runs: Runs, frame: pd.DataFrame) -> None:
    """Each method's first run (lowest seed) at the matched sparsities, densities from its level records."""
    first = frame.sort_values(["seed", "image", "level"]).drop_duplicates("method")  # one whole row per method
    write_profiles(rep, layer_profiles(first, frame, "method", MATCHED_SPARSITIES, logged_densities(runs)),
                   "per-layer density at matched global sparsity",
                   "Per-layer density of each method's mask at matched sparsities, layers in forward order; "
                   "layerwise_summary.csv has the mean density of the first vs last third of the layers (ratio > 1: "
                   "the mask keeps early layers denser).", "no pruned levels logged yet.")


def logged_densities(runs: Runs) -> Densities:
    """Layer densities from each level's logged record (None where the sweep did not log it)."""
    def densities(run_id: str, level: int) -> dict[str, float] | None:
        return (runs.artifact_json(run_id, artifact(level, RECORD)) or {}).get("layer_densities")

    return densities


def layer_profiles(picked: pd.DataFrame, levels: pd.DataFrame, by: str, targets: Sequence[float],
                   densities: Densities, tolerance: float | None = None) -> tuple[list[dict], list[dict]]:
    """Per picked run (labelled by its ``by`` column), the layer densities of its level in ``levels`` nearest
    each target sparsity: never the dense level, nor one farther than ``tolerance`` from the target. Rows
    per layer in forward order, and one summary (first vs last third of the layers) per run and target."""
    rows, summary = [], []
    for _, run in picked.iterrows():
        one = levels[levels["run_id"] == run["run_id"]]
        for target in targets:
            at = nearest_level(one, target)
            if at.empty or int(at["level"].iloc[0]) == 0:
                continue
            sparsity = float(at["sparsity"].iloc[0])
            if tolerance is not None and abs(sparsity - target) > tolerance:
                continue
            dens = densities(str(run["run_id"]), int(at["level"].iloc[0]))
            if not dens:
                continue
            head = {"method": run[by], "target_sparsity": target, "sparsity": sparsity}
            rows += [{**head, "layer": layer, "density": dens[layer]} for layer in forward_order(list(dens))]
            summary.append({**head, **layer_summary(dens)})
    return rows, summary


def write_profiles(rep: Report, profiles: tuple[list[dict], list[dict]], title: str, sentence: str,
                   missing: str) -> None:
    """The layer-wise section: layerwise.csv, layerwise_summary.csv and the figure, or ``missing`` alone."""
    rows, summary = profiles
    if not rows:
        rep.add("Layer-wise sparsity", missing, [])
        return
    table = pd.DataFrame(rows)
    table.to_csv(rep.out / "layerwise.csv", index=False)
    pd.DataFrame(summary).to_csv(rep.out / "layerwise_summary.csv", index=False)
    path = figures.layerwise(table, rep.out / "layerwise.png", title)
    rep.add("Layer-wise sparsity", sentence, [path, rep.out / "layerwise.csv", rep.out / "layerwise_summary.csv"])
