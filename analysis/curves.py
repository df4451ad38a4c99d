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
from .layers import (
    GROUPS,
    TOLERANCE,
    claims,
    compare,
    cumulative_sparsity,
    frozen_convs,
    input_convs,
    keeps_input_convs,
    random_null,
    theta0_null,
    theta0_weights,
)
from .lines import Layout, caption, layout, run_names, stats_table
from .stats import (
    MATCHED_SPARSITIES,
    curve_stats,
    forward_order,
    given,
    markdown,
    mean_std,
    nearest_level,
)

if TYPE_CHECKING:
    from .runs import Runs

Densities = Callable[[str, int], "dict[str, float] | None"]  # (run id, level) -> the mask's layer densities
Panels = dict[str, dict[str, pd.DataFrame]]  # panel title -> line label -> curve_stats rows
Profiles = tuple[list[dict], list[dict], list[dict]]  # rows per layer, per layer group, of the cumulative curve
LEVEL_TOLERANCE = 0.03  # a level farther than this from a matched sparsity does not stand for it


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


SSIM_OF = {"psnr_ema": "ssim_ema", "psnr_final": "ssim_final", "psnr_posterior": "ssim_posterior", "psnr": "ssim",
           "psnr_oracle": "ssim_oracle"}  # a PSNR and the SSIM of the same output (lipsweep.core.records)


def _logged(frame: pd.DataFrame, metric: str) -> bool:
    return metric in frame and frame[metric].notna().any()


def ssim_pair(frame: pd.DataFrame, metric: str) -> tuple[str, str] | None:
    """The report metric and the SSIM of the same output where logged, else the first PSNR/SSIM pair of one
    output the sweep logged (e.g. psnr_final/ssim_final); None without SSIM."""
    if _logged(frame, SSIM_OF.get(metric, "")):
        return metric, SSIM_OF[metric]
    return next(((p, s) for p, s in SSIM_OF.items() if _logged(frame, p) and _logged(frame, s)), None)


def curve_figure(rep: Report, frame: pd.DataFrame, recipe: Recipe, name: str, metric: str) -> tuple[list[Path], Layout]:
    """curves_METRIC.png (a line per primary value, panels the other varying axes) and its CSV."""
    lay = layout(frame, recipe, metric)
    label = figures.axis_label(metric)
    path = figures.primary_curves(lay, label, rep.out / f"curves_{metric}.png",
                                  f"{name}: {label} vs sparsity, mean ± 1 std over seeds")
    stats_table(lay).to_csv(rep.out / f"curves_{metric}.csv", index=False)
    return [path, rep.out / f"curves_{metric}.csv"], lay


def _pair_note(metric: str, pair: tuple[str, str] | None) -> str:
    if pair is None:
        return " No SSIM was logged."
    if pair[0] == metric:
        return f" curves_{pair[1]}: the SSIM of the same output as {metric}."
    return (f" SSIM was logged for another output than {metric}'s: curves_{pair[1]} goes with curves_{pair[0]} "
            f"({figures.axis_label(pair[0])}), the PSNR of the same output.")


def write_curves(rep: Report, frame: pd.DataFrame, recipe: Recipe, name: str, metric: str) -> None:
    """The report metric and the SSIM of the same output vs sparsity (Figs. 3, 9, 15: the paper's legend as
    lines); each caption names the runs drawn."""
    pair = ssim_pair(frame, metric)
    shown = [m for m in dict.fromkeys((metric, *(pair or ()))) if _logged(frame, m)]
    for i, m in enumerate(shown):
        files, lay = curve_figure(rep, frame, recipe, name, m)
        where = f", one panel per {' x '.join(lay.panel_axes)}" if lay.panel_axes else ""
        runs = " Runs drawn: " + caption(lay) if i == 0 else f" The same runs as curves_{shown[0]}."
        sentence = (f"{figures.axis_label(m)} per IMP level: one line per {lay.axis} ({' / '.join(lay.styles)}){where}; "
                    "mean ± 1 std over seeds; dashed grey: the dense network." + (_pair_note(metric, pair) if i == 0 else "")
                    + runs)
        rep.add(f"Sparsity vs {figures.axis_label(m)}", sentence, files)


def write_table(rep: Report, frame: pd.DataFrame, recipe: Recipe, metric: str) -> None:
    """The paper's table layout: rows = facet x series (e.g. image, task, method), columns = sparsity, cells =
    mean ± std over seeds. Every facet the recipe declares is a row key, so images and tasks never pool.
    The obtainable final-EMA PSNR and the paper's oracle EMA peak each get a table where both exist."""
    data = frame.dropna(subset=["level"])
    keys = [k for k in (*recipe.facet, *recipe.series) if k in data]
    files, linked = sparsity_table(rep.out, data, keys, metric, "table"), []
    for other in ("psnr_ema", "psnr_ema_peak", "mse_oracle"):
        if other != metric and other in data and data[other].notna().any():
            linked += sparsity_table(rep.out, data, keys, other, f"table_{other}")
    others = ", ".join(f"[{p.name}]({p.name})" for p in linked if p.suffix == ".md")
    rep.add("Table", f"{metric} per sparsity, mean ± std over seeds (and images where the recipe pools them), "
            f"one row per {' x '.join(keys)} (the layout of the paper's Tables 1/2/4)."
            + (f" The same for the other metric(s), linked, not printed: {others} (table_psnr_ema* holds the other "
               "of the obtainable final EMA PSNR and the paper's oracle EMA peak, table_mse_oracle a generator's "
               "restart chosen with the clean image)." if others else ""), files + linked, tuple(linked))


LAYERWISE = ("Per-layer density of each series' masks at matched sparsities, layers in forward order (dashed: "
             "the untrained-theta_0 null). layerwise_types: each layer type's and each third's (of the conv weights "
             "in forward order) density weighted by layer size (kept / total weights), next to the theta_0 null (the "
             "same prior, width, depth and seed, pruned once globally by |w| to the same count; input convs frozen "
             "where the run froze them) and random pruning's expectation (the global density); mean over seeds and "
             "images (n). The excess over the null tells the paper's claims apart: an unweighted mean over layers is "
             "confounded by the init scale (1x1 convs start 3x larger than 3x3 convs, so theta_0 alone keeps late "
             "layers denser). layerwise_cumulative: the reference code's curve (a running size-weighted sparsity, "
             "the input convs measured as dense), not a per-layer statistic: it starts at 0 for any mask.")


def series_of(row: pd.Series) -> str:
    """A DIP chain's Fig. 7 series: its method, IMP on the clean image (the reference code's target) and masks
    with the input convs kept dense (``keep_input_convs``) apart."""
    return (str(row["method"]) + (" (clean target)" if given(row, "imp_target") == "clean" else "")
            + (" (input convs kept)" if keeps_input_convs(row) else ""))


def write_layerwise(rep: Report, runs: Runs, frame: pd.DataFrame) -> None:
    """Every chain (all seeds and images) at each matched sparsity it reached, densities from its level records."""
    data = frame.dropna(subset=["level"])
    if "method" not in data or data.empty:
        rep.add("Layer-wise sparsity", "no pruned levels logged yet.", [])
        return
    data = data.assign(series=data.apply(series_of, axis=1))
    write_profiles(rep, layer_profiles(data.drop_duplicates("run_id"), data, "series", MATCHED_SPARSITIES,
                                       logged_densities(runs), LEVEL_TOLERANCE),
                   "per-layer density at matched global sparsity", f"{LAYERWISE} Drawn from {run_names(data)}.",
                   "no pruned levels logged yet.")


def logged_densities(runs: Runs) -> Densities:
    """Layer densities from each level's logged record (None where the sweep did not log it)."""
    def densities(run_id: str, level: int) -> dict[str, float] | None:
        return (runs.artifact_json(run_id, artifact(level, RECORD)) or {}).get("layer_densities")

    return densities


def _level_at(one: pd.DataFrame, target: float, tolerance: float | None) -> tuple[int, float] | None:
    """The run's pruned level nearest ``target`` and its sparsity; None for the dense level or one too far."""
    at = nearest_level(one, target)
    if at.empty or int(at["level"].iloc[0]) == 0:
        return None
    sparsity = float(at["sparsity"].iloc[0])
    if tolerance is not None and abs(sparsity - target) > tolerance:
        return None
    return int(at["level"].iloc[0]), sparsity


def run_profiles(run: pd.Series, head: dict, dens: dict[str, float]) -> Profiles:
    """One mask's rows: per layer (with the theta_0 null's and random's density), per group (``layers.compare``)
    and the reference-style cumulative curve; per layer only where no theta_0 can be rebuilt."""
    order = forward_order(list(dens))
    weights, frozen = theta0_weights(run), frozen_convs(run)
    if weights is None:
        return [{**head, "layer": n, "density": dens[n]} for n in order], [], []
    sizes = {n: int(w.numel()) for n, w in weights.items()}
    null, rnd = theta0_null(weights, dens, frozen), random_null(dens, sizes, frozen)
    rows = [{**head, "layer": n, "size": sizes.get(n), "density": dens[n], "null": null.get(n),
             "random": rnd.get(n)} for n in order]
    curve = [{**head, "layer": n, "cumulative_sparsity": c}
             for n, c in cumulative_sparsity(dens, sizes, input_convs(run))]
    return rows, [{**head, **g} for g in compare(dens, weights, frozen, null)], curve


def layer_profiles(picked: pd.DataFrame, levels: pd.DataFrame, by: str, targets: Sequence[float],
                   densities: Densities, tolerance: float | None = None) -> Profiles:
    """Per picked run (labelled by its ``by`` column), its level in ``levels`` nearest each target sparsity
    (never the dense level, nor one farther than ``tolerance``): ``run_profiles``' three tables."""
    out: Profiles = ([], [], [])
    for _, run in picked.iterrows():
        one = levels[levels["run_id"] == run["run_id"]]
        for target in targets:
            found = _level_at(one, target, tolerance)
            dens = densities(str(run["run_id"]), found[0]) if found else None
            if not dens:
                continue
            head = {"method": run[by], "seed": given(run, "seed"), "image": given(run, "image"),
                    "run_id": run["run_id"], "target_sparsity": target, "sparsity": found[1]}
            for part, new in zip(out, run_profiles(run, head, dens)):
                part.extend(new)
    return out


def group_means(groups: pd.DataFrame) -> pd.DataFrame:
    """``layers.compare``'s rows averaged over runs per (series, target, group); n = runs."""
    keys = ["method", "target_sparsity", "group"]
    cols = ["sparsity", "density", "null", "random", "excess_null", "excess_random"]
    means = groups.groupby(keys, sort=False)[cols].mean().assign(n=groups.groupby(keys, sort=False).size())
    means = means.reset_index()
    means["group"] = pd.Categorical(means["group"], GROUPS, ordered=True)
    return means.sort_values(["method", "group", "target_sparsity"]).reset_index(drop=True)


def _types_table(out: Path, means: pd.DataFrame) -> list[Path]:
    """layerwise_types.csv (every number) and .md (rows series x group, a column per target sparsity)."""
    means.round(4).to_csv(out / "layerwise_types.csv", index=False)
    cell = means.assign(cell=means.apply(lambda r: f"{r['density']:.2f} (null {r['null']:.2f}, "
                                                   f"{r['excess_null']:+.2f}; uniform {r['random']:.2f})", axis=1),
                        target=(100 * means["target_sparsity"]).round().astype(int).astype(str) + "%")
    table = cell.pivot_table(index=["method", "group"], columns="target", values="cell", aggfunc="first",
                             observed=True, sort=False)
    (out / "layerwise_types.md").write_text(markdown(table.fillna("missing")))
    return [out / "layerwise_types.md", out / "layerwise_types.csv"]


def write_profiles(rep: Report, profiles: Profiles, title: str, sentence: str, missing: str) -> None:
    """The layer-wise section: per-layer table and figure; where theta_0 could be rebuilt, the size-weighted
    group table against the nulls, its excess figure, the reference-style curve and the claims' verdicts."""
    rows, groups, curve = profiles
    if not rows:
        rep.add("Layer-wise sparsity", missing, [])
        return
    out = rep.out
    table = pd.DataFrame(rows)
    table.to_csv(out / "layerwise.csv", index=False)
    files = [figures.layerwise(table, out / "layerwise.png", title), out / "layerwise.csv"]
    if groups:
        means = group_means(pd.DataFrame(groups))
        pd.DataFrame(curve).to_csv(out / "layerwise_cumulative.csv", index=False)
        files += [figures.excess(means, out / "layerwise_excess.png", "size-weighted density minus the theta_0 "
                                 "magnitude null"), *_types_table(out, means),
                  figures.cumulative(pd.DataFrame(curve), out / "layerwise_cumulative.png",
                                     "reference-style cumulative (not per-layer): running sparsity, input convs "
                                     "dense"), out / "layerwise_cumulative.csv"]
        lines = claims(means)
        sentence += ("\n\nThe paper's claims, from these numbers (|difference| <= "
                     f"{TOLERANCE} counts as none):\n\n" + "\n".join(lines) if lines else "")
    rep.add("Layer-wise sparsity", sentence, files)
