"""Figures over the fit's iterations, from each level's curve.json: the fitting loss of LIP, SNIP, random and
dense nets on four targets (Fig. 10), PSNR/SSIM per IMP level (Fig. 11); and the SGLD-DIP curves over
sparsity with the posterior images (Fig. 16)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from lipsweep.core.paths import CURVE, artifact

from . import figures
from .inputs import Inputs
from .lines import run_names
from .stats import curve_stats, markdown, mean_std, nearest_level
from .visual import METHOD_NAMES, evenly, imp_levels, write_posterior_grid

if TYPE_CHECKING:
    from .runs import Runs

CURVE_LEVELS = 6  # lines per Fig. 11 panel (evenly picked levels; the csv keeps every level)
SGLD_METRICS = ("psnr_posterior", "psnr_ema", "psnr_final")  # Fig. 16: the posterior mean first


def curve_points(runs: Runs, run_id: str, level: int) -> pd.DataFrame | None:
    """The first image's curve of a level (curve.json: one list of points per fitted image); None if absent."""
    data = runs.artifact_json(run_id, artifact(level, CURVE))
    if not data:
        return None
    points = data[0] if isinstance(data[0], list) else data
    return pd.DataFrame(points) if points and "iter" in points[0] else None


def level_curves(runs: Runs, picks: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """One long frame of curve points for each picked (run, level) row, with the row's ``keys`` attached."""
    parts = []
    for _, row in picks.iterrows():
        points = curve_points(runs, row["run_id"], int(row["level"]))
        if points is not None:
            parts.append(points.assign(**{k: row.get(k) for k in keys}, run_id=row["run_id"], level=int(row["level"]),
                                       sparsity=float(row["sparsity"])))
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()


def iter_stats(points: pd.DataFrame, keys: list[str], value: str) -> pd.DataFrame:
    """Mean, std and count over seeds of ``value`` per (keys..., iter)."""
    out = points.dropna(subset=[value]).groupby([*keys, "iter"], dropna=False).agg(
        mean=(value, "mean"), std=(value, "std"), n=(value, "count"), sparsity=("sparsity", "mean")).reset_index()
    return out.assign(std=out["std"].fillna(0.0))


def _facets(data: pd.DataFrame, recipe_facet: tuple[str, ...]) -> list[str]:
    """The facet keys that vary (task only when the targets use more than one); at least one key."""
    present = [k for k in recipe_facet if k in data]
    varying = [k for k in present if data[k].astype(str).nunique() > 1]
    return varying or present[:1]


def _target_picks(x: Inputs) -> pd.DataFrame:
    """Fig. 10's fits: level 0 as 'dense' (each seed's once), and per run the level nearest the report's
    sparsity labelled by its method (LIP / SNIP / random)."""
    data = x.rows.dropna(subset=["level"])
    dense = data[data["level"] == 0].assign(mask="dense")
    at = nearest_level(data[data["level"] > 0], x.sparsity)
    methods = at["method"] if "method" in at else pd.Series("pruned", index=at.index)
    sparse = at.assign(mask=[METHOD_NAMES.get(str(m), str(m)) for m in methods])
    keys = [k for k in (*x.recipe.facet, "image", "seed") if k in dense]
    dense = dense.sort_values(["label", "run_id"] if "label" in dense else ["run_id"]).drop_duplicates(keys)
    return pd.concat([dense, sparse], ignore_index=True)


def first_iter(line: pd.DataFrame, threshold: float) -> float:
    """The first curve iteration whose mean loss is at or below ``threshold``; NaN if it never gets there."""
    hits = line[line["mean"] <= threshold]
    return float(hits["iter"].iloc[0]) if not hits.empty else np.nan


def threshold_table(stats: pd.DataFrame, facet: list[str]) -> pd.DataFrame:
    """Per target x mask: iterations until the seed-mean loss reaches 2 x the dense net's final loss on that
    target, and half its own initial loss (Fig. 10's claim: LIP fits the image fast and noise slowly)."""
    rows = []
    for fkeys, panel in stats.groupby(facet, dropna=False):
        fkeys = fkeys if isinstance(fkeys, tuple) else (fkeys,)
        dense = panel[panel["mask"] == "dense"].sort_values("iter")
        threshold = 2 * float(dense["mean"].iloc[-1]) if not dense.empty else np.nan
        for mask, line in panel.groupby("mask"):
            line = line.sort_values("iter")
            rows.append({**dict(zip(facet, fkeys)), "mask": mask, "seeds": int(line["n"].max()),
                         "sparsity": round(float(line["sparsity"].mean()), 4),
                         "initial_loss": float(line["mean"].iloc[0]), "final_loss": float(line["mean"].iloc[-1]),
                         "threshold": threshold, "iter_to_threshold": first_iter(line, threshold),
                         "iter_to_half_initial": first_iter(line, float(line["mean"].iloc[0]) / 2)})
    table = pd.DataFrame(rows)
    for col in ("iter_to_threshold", "iter_to_half_initial"):
        table[col] = table[col].astype("Int64")  # "never reached" stays <NA>
    return table


def write_learning_targets(x: Inputs) -> None:
    """Fig. 10: fitting loss vs iteration (log-log) of the dense net and the LIP / SNIP / random masks near
    the report's sparsity, one panel per target (and task where they differ), mean over seeds."""
    data = x.rows.dropna(subset=["level"])
    facet = _facets(data, x.recipe.facet)
    picks = _target_picks(x) if not data.empty else data
    points = level_curves(x.runs, picks, [*facet, "mask", "seed"]) if not picks.empty else pd.DataFrame()
    if points.empty or "loss" not in points:
        x.rep.add("Learning targets", "no curve.json with a fitting loss logged yet.", [])
        return
    stats = iter_stats(points, [*facet, "mask"], "loss")
    stats.to_csv(x.rep.out / "learning_targets.csv", index=False)
    table = threshold_table(stats, facet)
    table.round(6).to_csv(x.rep.out / "learning_targets_iters.csv", index=False)
    (x.rep.out / "learning_targets_iters.md").write_text(markdown(table.round(5), index=False))
    order = {m: i for i, m in enumerate(("dense", *METHOD_NAMES.values()))}  # Fig. 10's legend order
    panels = {", ".join(f"{k}={v}" for k, v in zip(facet, f if isinstance(f, tuple) else (f,))):
              dict(sorted(part.groupby("mask"), key=lambda mt: (order.get(mt[0], len(order)), mt[0])))
              for f, part in stats.groupby(facet, dropna=False)}
    path = figures.iterations(panels, "fitting loss (MSE)", x.rep.out / "learning_targets.png",
                              f"{x.name}: fitting loss per target at ~{100 * x.sparsity:.0f}% sparsity (Fig. 10)",
                              logx=True, logy=True)
    x.rep.add("Learning targets (Fig. 10)", "Fitting loss vs iteration per target, one line per mask (dense; LIP, "
              f"SNIP, random near {100 * x.sparsity:.0f}% sparsity), mean ± std over seeds. The table: the first "
              "iteration where the seed-mean loss reaches 2 x the dense net's final loss on that target, and half "
              f"its own initial loss (empty: never). Drawn from {run_names(picks)}.",
              [path, x.rep.out / "learning_targets_iters.md", x.rep.out / "learning_targets_iters.csv",
               x.rep.out / "learning_targets.csv"])


def _curve_metric(points: pd.DataFrame, name: str) -> str | None:
    """The EMA variant of a curve metric where the curve has it, else the raw one, else None."""
    for key in (f"{name}_ema", name):
        if key in points and points[key].notna().any():
            return key
    return None


def write_learning_curves(x: Inputs) -> None:
    """Fig. 11: PSNR and SSIM vs iteration of each IMP level's reported fit, one line per level (labelled by
    its sparsity; at most six drawn, all in the csv), one panel per image and task, mean over seeds."""
    data = imp_levels(x.rows)
    keys = [k for k in ("image", "task") if k in data]
    points = level_curves(x.runs, data, [*keys, "seed"]) if not data.empty else pd.DataFrame()
    metrics = [m for m in (_curve_metric(points, "psnr"), _curve_metric(points, "ssim")) if m] if len(points) else []
    if not metrics:
        x.rep.add("Learning curves", "no curve.json with PSNR or SSIM logged yet.", [])
        return
    long = pd.concat([iter_stats(points, [*keys, "level"], m).assign(metric=m) for m in metrics], ignore_index=True)
    long.to_csv(x.rep.out / "learning_curves.csv", index=False)
    files = []
    for m in metrics:
        part = long[long["metric"] == m]
        panels = {}
        for fkeys, panel in part.groupby(keys, dropna=False) if keys else [((), part)]:
            shown = evenly(sorted(int(v) for v in panel["level"].unique()), CURVE_LEVELS)
            name = ", ".join(str(k) for k in (fkeys if isinstance(fkeys, tuple) else (fkeys,)))
            panels[name] = {f"S={100 * t['sparsity'].mean():.1f}%": t for lv, t in panel.groupby("level")
                            if int(lv) in shown}
        files.append(figures.iterations(panels, m, x.rep.out / f"learning_curves_{m}.png",
                                        f"{x.name}: {m} per IMP level (Fig. 11)", logx=False))
    x.rep.add("Learning curves (Fig. 11)", f"{' and '.join(metrics)} vs iteration of each IMP level's fit (S = "
              f"sparsity), mean ± std over seeds; learning_curves.csv has every level. Drawn from {run_names(data)}.",
              [*files, x.rep.out / "learning_curves.csv"])


def _sgld_table(data: pd.DataFrame, keys: list[str], metrics: list[str]) -> pd.DataFrame:
    """Rows (keys..., metric), columns sparsity, cells mean ± std over seeds (Fig. 16's numbers)."""
    rows = []
    for m in metrics:
        for idx, cell in data.groupby([*keys, "level"], dropna=False):
            rows.append({**dict(zip(keys, idx[:-1])), "metric": m,
                         "sparsity": f"{100 * cell['sparsity'].mean():.1f}%", "value": mean_std(cell[m])})
    table = pd.DataFrame(rows)
    order = list(dict.fromkeys(table["sparsity"]))
    return table.pivot(index=[*keys, "metric"], columns="sparsity", values="value").reindex(columns=order)


def write_sgld(x: Inputs) -> None:
    """Fig. 16: SGLD-DIP's posterior-mean PSNR (and the last EMA / raw output's) vs sparsity per image, mean
    ± std over seeds, the dense net marked with a star; and the posterior mean / std images of one seed."""
    data = imp_levels(x.rows)
    metrics = [m for m in SGLD_METRICS if m in data and data[m].notna().any()]
    if not metrics:
        x.rep.add("SGLD", "no SGLD metrics (psnr_posterior) logged yet.", [])
        return
    keys = [k for k in ("image", "task") if k in data]
    panels, stars = {}, {}
    for fkeys, one in data.groupby(keys, dropna=False) if keys else [((), data)]:
        name = ", ".join(str(k) for k in (fkeys if isinstance(fkeys, tuple) else (fkeys,)))
        panels[name] = {m: curve_stats(one, [], m) for m in metrics}
        dense = one.loc[one["level"] == 0, metrics[0]].dropna()
        if not dense.empty:
            stars[name] = {f"dense DIP ({metrics[0]})": {"x": 0.0, "y": float(dense.mean())}}
    path = figures.curves(panels, "PSNR (dB)", x.rep.out / "sgld.png", f"{x.name}: SGLD-DIP tickets (Fig. 16)", stars)
    table = _sgld_table(data, keys, metrics)
    table.to_csv(x.rep.out / "sgld.csv")
    (x.rep.out / "sgld.md").write_text(markdown(table))
    grid = write_posterior_grid(x, data)
    missing = "" if metrics[0] == SGLD_METRICS[0] else f" (no {SGLD_METRICS[0]} logged yet)"
    x.rep.add("SGLD-DIP (Fig. 16)", f"{', '.join(metrics)}{missing} vs sparsity per image, mean ± std over seeds; "
              f"the star: the dense net. Drawn from {run_names(data)}. " + ("The images: posterior mean and std of one seed at dense, a middle "
                                             "and the sparsest level." if grid else "No posterior images logged yet."),
              [path, *grid, x.rep.out / "sgld.md", x.rep.out / "sgld.csv"])
