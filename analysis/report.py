"""``lipsweep analyze NAME``: every figure and table an experiment calls for, an index.md that shows them,
and the same files logged to the sweep's parent MLflow run."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ..paths import IMAGES, RECORD, artifact
from ..registry import Registry
from . import classification, figures, learning, tables, visual
from .runs import Runs
from .stats import (MATCHED_SPARSITIES, curve_stats, forward_order, layer_summary, markdown, mask_label, mean_std,
                    nearest_level, source_label, transfer_matrix)


@dataclass(frozen=True)
class Recipe:
    """What an experiment is compared by: line series, panel facets, and which outputs it needs."""

    series: tuple[str, ...] = ("method",)
    facet: tuple[str, ...] = ("image", "task")
    parts: tuple[str, ...] = ("curves", "table", "visual_grid")
    all_kinds: bool = False  # curves and tables over every trial (evaluations too), not only the chains
    options: Mapping[str, object] = field(default_factory=dict)  # a part's settings, e.g. fft_sparsities


RECIPES: Registry[Recipe] = Registry("recipe")  # experiment name -> how its report compares; default Recipe()
RECIPES.register("rewind_ablation", Recipe(series=("rewind", "rewind_budget", "imp_target")))
RECIPES.register("lip_existence", Recipe(series=("method", "imp_target"),
                                         parts=("curves", "table", "layerwise", "fft", "visual_grid")))
RECIPES.register("multi_image", Recipe(series=("mask",), parts=("curves", "table"), all_kinds=True))
RECIPES.register("transfer_tasks", Recipe(series=("source",), parts=("transfer", "curves", "table"), all_kinds=True))
RECIPES.register("transfer_images", Recipe(series=("source",), parts=("transfer", "curves"), all_kinds=True))
RECIPES.register("random_structure", Recipe(series=("method",), parts=("curves", "table", "layerwise", "visual_grid")))
RECIPES.register("imp_early_stop", Recipe(series=("method",), parts=("curves", "stop", "visual_grid")))
RECIPES.register("deep_decoder", Recipe(series=("model_width",), parts=("curves", "dd_table")))
RECIPES.register("synflow", Recipe(series=("method",), parts=("curves", "table", "layerwise", "visual_grid")))
RECIPES.register("stop_threshold", Recipe(parts=("rules",)))
RECIPES.register("gan_lip", Recipe(series=("method",), facet=("task",), parts=("curves", "table", "gan_grid"),
                                   all_kinds=True))
RECIPES.register("learning_targets", Recipe(series=("mask",), facet=("target", "task"), parts=("learning_targets",),
                                            all_kinds=True))
RECIPES.register("learning_curves", Recipe(parts=("learning_curves", "snapshots", "curves", "visual_grid")))
RECIPES.register("sgld", Recipe(parts=("sgld", "table", "visual_grid")))
RECIPES.register("parameter_count", Recipe(parts=("table3", "curves", "visual_grid")))
RECIPES.register("benchmarks", Recipe(parts=("table5", "table", "visual_grid")))
RECIPES.register("classification_transfer", Recipe(parts=("classification",), all_kinds=True))
RECIPES.register("fft", Recipe(parts=("fft", "curves", "table", "visual_grid"),
                               options={"fft_sparsities": (0.67, 0.79)}))  # Fig. 18's two sparsities


@dataclass(frozen=True)
class Inputs:
    """What a report part reads: the sweep's runs, its tidy table (``frame``: every row; ``rows``: what curves and
    tables read, the chains or, with the recipe's ``all_kinds``, every trial), options."""

    rep: "Report"
    runs: Runs
    frame: pd.DataFrame
    rows: pd.DataFrame
    recipe: Recipe
    name: str
    metric: str
    sparsity: float
    delta: float = 0.5  # dB below dense a matching ticket may lose (Fig. 2's sparsest matching column)


@dataclass
class Report:
    out: Path
    sections: list[tuple[str, str, list[Path]]] = field(default_factory=list)

    def add(self, title: str, sentence: str, files: list[Path]) -> None:
        self.sections.append((title, sentence, files))

    @property
    def files(self) -> list[Path]:
        return [f for _, _, fs in self.sections for f in fs]


def _derive(frame: pd.DataFrame) -> pd.DataFrame:
    frame = frame.copy()
    if "multi_images" in frame:
        frame["images"] = frame["multi_images"].apply(lambda m: f"{1 + len(m or ())} image(s)")
    if "kind" in frame and not frame.empty:
        frame["source"] = frame.apply(source_label, axis=1)
        frame["mask"] = frame.apply(mask_label, axis=1)
    if "model" in frame and "width" in frame:
        frame["model_width"] = frame["model"].astype(str) + "-" + frame["width"].astype(str)
    return frame


def _facet_name(keys: tuple, facet: tuple[str, ...]) -> str:
    keys = keys if isinstance(keys, tuple) else (keys,)
    return ", ".join(f"{k}={v}" for k, v in zip(facet, keys))


def _panels(frame: pd.DataFrame, recipe: Recipe, metric: str) -> dict[str, dict[str, pd.DataFrame]]:
    facet = [f for f in recipe.facet if f in frame]
    series = [s for s in recipe.series if s in frame]
    stats = curve_stats(frame, [*facet, *series], metric)
    panels: dict[str, dict[str, pd.DataFrame]] = {}
    for fkeys, part in stats.groupby(facet, dropna=False):
        name = _facet_name(fkeys, tuple(facet))
        panels[name] = {", ".join(f"{s}={v}" for s, v in zip(series, skeys if isinstance(skeys, tuple) else (skeys,))):
                        t for skeys, t in part.groupby(series, dropna=False)}
    return panels


def write_curves(rep: Report, frame: pd.DataFrame, recipe: Recipe, name: str, metric: str) -> None:
    files = []
    for m in dict.fromkeys((metric, "ssim_final", "ssim")):
        if m in frame and frame[m].notna().any():
            path = rep.out / f"curves_{m}.png"
            files.append(figures.curves(_panels(frame, recipe, m), m, path, f"{name}: {m} vs sparsity"))
            stats = curve_stats(frame, [k for k in (*recipe.facet, *recipe.series) if k in frame], m)
            stats.to_csv(rep.out / f"curves_{m}.csv", index=False)
            files.append(rep.out / f"curves_{m}.csv")
    rep.add("Sparsity vs quality", f"{metric} and SSIM per IMP level, one line per "
            f"{'/'.join(s for s in recipe.series if s in frame)}, mean ± 1 std over seeds; dashed: the dense "
            "network.", files)


def _table(rep: Report, data: pd.DataFrame, keys: list[str], metric: str, stem: str) -> list[Path]:
    data = data.assign(sparsity_pct=(data.groupby([*keys, "level"])["sparsity"].transform("mean") * 100).round(1))
    seeds = int(data.groupby([*keys, "level"])[metric].count().max())
    table = data.groupby([*keys, "sparsity_pct"])[metric].apply(lambda v: mean_std(v, seeds)).unstack("sparsity_pct")
    table.columns = [f"{c:.1f}%" for c in table.columns]
    table = table.fillna("missing")
    table.to_csv(rep.out / f"{stem}.csv")
    (rep.out / f"{stem}.md").write_text(markdown(table))
    return [rep.out / f"{stem}.md", rep.out / f"{stem}.csv"]


def write_table(rep: Report, frame: pd.DataFrame, recipe: Recipe, metric: str) -> None:
    """The paper's table layout: rows = facet x series (e.g. image, task, method), columns = sparsity, cells =
    mean ± std over seeds. Every facet the recipe declares is a row key, so images and tasks never pool.
    The obtainable final-EMA PSNR and the paper's oracle EMA peak each get a table where both exist."""
    data = frame.dropna(subset=["level"])
    keys = [k for k in (*recipe.facet, *recipe.series) if k in data]
    files = _table(rep, data, keys, metric, "table")
    for other in ("psnr_ema", "psnr_ema_peak", "mse_oracle"):
        if other != metric and other in data and data[other].notna().any():
            files += _table(rep, data, keys, other, f"table_{other}")
    rep.add("Table", f"{metric} per sparsity, mean ± std over seeds (and images where the recipe pools them), "
            f"one row per {' x '.join(keys)} (the layout of the paper's Tables 1/2/4); table_psnr_ema* holds the "
            "other of the obtainable final EMA PSNR and the paper's oracle EMA peak, table_mse_oracle a "
            "generator's restart chosen with the clean image.", files)


def write_transfer(rep: Report, frame: pd.DataFrame, metric: str, sparsity: float) -> None:
    matrix, relative = transfer_matrix(frame, metric, sparsity)
    if matrix.empty:
        rep.add("Transfer", "no evaluation runs with metrics yet.", [])
        return
    matrix.to_csv(rep.out / "transfer.csv")
    relative.to_csv(rep.out / "transfer_relative.csv")
    files = [figures.heatmap(matrix, rep.out / "transfer.png", f"{metric} at ~{100 * sparsity:.0f}% sparsity"),
             figures.heatmap(relative, rep.out / "transfer_relative.png",
                             f"{metric} minus the target's own mask (dB)", fmt="{:+.2f}", center=True),
             rep.out / "transfer.csv", rep.out / "transfer_relative.csv"]
    rep.add("Transfer matrix", f"Rows: where the mask was found; columns: where it was evaluated; cells: {metric} "
            f"at the level nearest {100 * sparsity:.0f}% sparsity, and the same relative to the target's own mask.",
            files)


def write_layerwise(rep: Report, runs: Runs, frame: pd.DataFrame) -> None:
    rows, summary = [], []
    first = frame.sort_values(["seed", "image", "level"]).drop_duplicates("method")  # one whole row per method
    for _, run in first.iterrows():
        one = frame[frame["run_id"] == run["run_id"]]
        for target in MATCHED_SPARSITIES:
            at = nearest_level(one, target)
            if at.empty or int(at["level"].iloc[0]) == 0:
                continue
            level = int(at["level"].iloc[0])
            rec = runs.artifact_json(run["run_id"], artifact(level, RECORD))
            if rec is None:
                continue
            dens = rec["layer_densities"]
            for layer in forward_order(list(dens)):
                rows.append({"method": run["method"], "target_sparsity": target, "sparsity": rec["sparsity"],
                             "layer": layer, "density": dens[layer]})
            summary.append({"method": run["method"], "target_sparsity": target, "sparsity": rec["sparsity"],
                            **layer_summary(dens)})
    if not rows:
        rep.add("Layer-wise sparsity", "no pruned levels logged yet.", [])
        return
    table = pd.DataFrame(rows)
    table.to_csv(rep.out / "layerwise.csv", index=False)
    pd.DataFrame(summary).to_csv(rep.out / "layerwise_summary.csv", index=False)
    path = figures.layerwise(table, rep.out / "layerwise.png", "per-layer density at matched global sparsity")
    rep.add("Layer-wise sparsity", "Per-layer density of each method's mask at matched sparsities, layers in "
            "forward order; layerwise_summary.csv has the mean density of the first vs last third of the layers "
            "(ratio > 1: the mask keeps early layers denser).",
            [path, rep.out / "layerwise.csv", rep.out / "layerwise_summary.csv"])


def _gan_row(runs: Runs, frame: pd.DataFrame, level: int) -> dict[str, np.ndarray]:
    """One task's images: the truth and observation from the dense level, then each method at ``level``."""
    row: dict[str, np.ndarray] = {}
    dense = frame[frame["level"] == 0]
    if not dense.empty:
        run_id = dense["run_id"].iloc[0]
        for name in ("clean", "observation", "restored"):
            img = runs.artifact_image(run_id, artifact(0, IMAGES[name]))
            if img is not None:
                row[{"clean": "truth", "restored": "dense"}.get(name, name)] = img
    for method, one in frame[frame["level"] == level].groupby("method"):
        img = runs.artifact_image(one["run_id"].iloc[0], artifact(level, IMAGES["restored"]))
        if img is not None:
            row[f"{method} {100 * one['sparsity'].iloc[0]:.0f}%"] = img
    return row


def write_gan_grid(rep: Report, runs: Runs, frame: pd.DataFrame, sparsity: float) -> None:
    """Fig. 8: per task, one image and seed: truth, observation, dense, and every method at the level nearest
    ``sparsity`` (or the sparsest level the sweep reached)."""
    data = frame.dropna(subset=["level"])
    if data.empty:
        rep.add("Reconstructions", "no logged levels yet.", [])
        return
    first = data.sort_values(["seed", "image"]).iloc[0]
    pick = data[(data["image"] == first["image"]) & (data["seed"] == first["seed"])]
    level = int(nearest_level(pick[pick["level"] > 0], sparsity)["level"].iloc[0]) if (pick["level"] > 0).any() else 0
    rows = {str(task): _gan_row(runs, one, level) for task, one in pick.groupby("task")}
    path = figures.grid(rows, rep.out / "reconstructions.png",
                        f"{first['image']}, seed {first['seed']}: level {level} (Fig. 8)")
    rep.add("Reconstructions", "Per task: the truth, the observation (inpainting), the dense generator's and each "
            "method's restoration at the sparsest level (the layout of Fig. 8).", [path])


def write_stop(rep: Report, frame: pd.DataFrame, metric: str) -> None:
    rows = []
    for run_id, one in frame.dropna(subset=["level"]).groupby("run_id"):
        one = one.sort_values("level")
        best = one.loc[one[metric].idxmax()]
        fired = one["stop_fired_at"].dropna() if "stop_fired_at" in one else pd.Series(dtype=float)
        chosen = one["stop_chosen"].dropna() if "stop_chosen" in one else pd.Series(dtype=float)
        pick = int(chosen.iloc[-1]) if len(chosen) else None
        rows.append({"image": one["image"].iloc[0], "task": one["task"].iloc[0], "seed": one["seed"].iloc[0],
                     "fired_at": int(fired.iloc[-1]) if len(fired) else None, "chosen": pick,
                     "chosen_sparsity": float(one.loc[one["level"] == pick, "sparsity"].iloc[0]) if pick is not None else np.nan,
                     f"chosen_{metric}": float(one.loc[one["level"] == pick, metric].iloc[0]) if pick is not None else np.nan,
                     "best_level": int(best["level"]), f"best_{metric}": float(best[metric]),
                     f"dense_{metric}": float(one.loc[one["level"] == 0, metric].iloc[0])})
    table = pd.DataFrame(rows)
    for col in ("fired_at", "chosen", "best_level", "seed"):
        table[col] = table[col].astype("Int64")  # levels are integers; "never fired" stays <NA>
    table = table.round(3)
    table.to_csv(rep.out / "stop_rule.csv", index=False)
    (rep.out / "stop_rule.md").write_text(markdown(table, index=False))
    marks: dict[str, dict] = {}
    for row in rows:
        if row["chosen"] is not None:
            one = frame[(frame["image"] == row["image"]) & (frame["task"] == row["task"])
                        & (frame["seed"] == row["seed"]) & (frame["level"] == row["chosen"])]
            marks.setdefault(f"image={row['image']}, task={row['task']}", {})[f"stop rule (seed {row['seed']})"] = {
                "x": 100 * float(one["sparsity"].iloc[0]), "y": float(one["imp_loss"].iloc[0])}
    path = figures.curves(_panels(frame, Recipe(series=("method",)), "imp_loss"), "imp_loss",
                          rep.out / "curves_imp_loss.png", "IMP loss per level (what the stop rule reads)", marks)
    rep.add("IMP stopping rule", f"Where the rule fired and which level it chose, vs the oracle-best level by "
            f"{metric} (Fig. 13); the IMP loss curves it reads.", [path, rep.out / "stop_rule.md", rep.out / "stop_rule.csv"])


def _dd_rows(data: pd.DataFrame, metric: str) -> list[dict]:
    """Per task, each deep decoder next to the LIP level with the nearest number of remaining conv weights."""
    rows = []
    for task, one in data.groupby("task") if "task" in data else [(None, data)]:
        lip = one[one["model"] == "dip"]
        levels = lip.groupby("level")["kept"].mean()
        for (width,), dd in one[one["model"] == "deep_decoder"].groupby(["width"]):
            kept = float(dd["kept"].mean())
            entry = {"task": task, "deep decoder": f"DD-{width}", "DD weights": int(kept),
                     f"DD {metric}": mean_std(dd[metric])}
            if not levels.empty:
                level = int((levels - kept).abs().idxmin())
                at = lip[lip["level"] == level]
                entry.update({"LIP level": level, "LIP sparsity": f"{100 * at['sparsity'].mean():.1f}%",
                              "LIP weights": int(at["kept"].mean()), f"LIP {metric}": mean_std(at[metric])})
            rows.append(entry)
    return rows


def write_dd_table(rep: Report, frame: pd.DataFrame, metric: str) -> None:
    """Table 2: deep decoders vs LIP tickets of their size, per task."""
    rows = _dd_rows(frame.dropna(subset=["level"]), metric)
    table = pd.DataFrame(rows)
    table.to_csv(rep.out / "table.csv", index=False)
    (rep.out / "table.md").write_text(markdown(table, index=False) if rows else "no deep decoder runs yet\n")
    rep.add("Table 2", f"Per task, deep decoders vs the LIP level with the nearest number of remaining conv "
            f"weights; {metric} mean ± std over seeds.", [rep.out / "table.md", rep.out / "table.csv"])


def write_rules(rep: Report, frame: pd.DataFrame) -> None:
    """The online stop-rule search: every proposed rule with its replayed score, best first."""
    cols = [c for c in ("label", "k", "tolerance", "offset", "smooth", "objective", "sparsity", "psnr_loss")
            if c in frame]
    table = frame.dropna(subset=["objective"])[cols].sort_values("objective", ascending=False)
    table.to_csv(rep.out / "rules.csv", index=False)
    (rep.out / "rules.md").write_text(markdown(table.round(4), index=False))
    rep.add("Proposed stop rules", "Each rule Optuna proposed, scored by replaying the stored chains: objective = "
            "sparsity minus the penalty for PSNR loss beyond delta; best first.", [rep.out / "rules.md", rep.out / "rules.csv"])


def write_platforms(rep: Report, frame: pd.DataFrame) -> None:
    """Where the sweep's levels were computed: one line, or (several platforms) a table of which levels of
    which trials came from where. Float kernels differ across CPUs and GPUs, and a magnitude ranking then
    flips weights near its threshold: levels from two platforms are not one platform's result."""
    if "platform" not in frame or frame["platform"].dropna().empty:
        return
    rows = frame.dropna(subset=["level"]).assign(platform=lambda f: f["platform"].fillna("unrecorded"))
    per = rows.groupby("platform").agg(levels=("level", "size"), trials=("run_id", "nunique")).reset_index()
    mixed = sorted(label for label, g in rows.groupby("label") if g["platform"].nunique() > 1)
    path = rep.out / "platforms.md"
    path.write_text(markdown(per, index=False) + ("\n\nTrials whose levels come from several platforms: "
                                                 + ", ".join(mixed) + "\n" if mixed else "\n"))
    if len(per) == 1:
        rep.add("Platform", f"Every level was computed on one platform: {per['platform'].iloc[0]}.", [path])
    else:
        rep.add("Computed on more than one platform",
                f"The levels of this sweep come from {len(per)} platforms ({len(mixed)} trials mix them): "
                "float kernels differ in their last bits between CPUs and GPUs, and IMP's masks then drift apart "
                "(benchmarks/platform_variance.py measures by how much). Compare levels of one platform, or "
                "rerun with `platform_key: true`.", [path])


def write_index(rep: Report, name: str, profile: str, n_runs: int, metric: str) -> Path:
    lines = [f"# {name} [{profile}]", "", f"{n_runs} trial runs; quality metric `{metric}`"
             + (" (an oracle: chosen with the clean image)" if metric == "psnr_peak" else "") + ".", ""]
    for title, sentence, files in rep.sections:
        lines += [f"## {title}", "", sentence, ""]
        for f in files:
            rel = f.relative_to(rep.out).as_posix()
            lines.append(f"![{rel}]({rel})" if f.suffix == ".png" else f"- [{rel}]({rel})")
            if f.suffix == ".md":
                lines += ["", f.read_text(), ""]
        lines.append("")
    path = rep.out / "index.md"
    path.write_text("\n".join(lines))
    return path


PARTS: Registry = Registry("part")  # a recipe's part -> the writer that adds its section to the report
PARTS.register("curves", lambda x: write_curves(x.rep, x.rows, x.recipe, x.name, x.metric))
PARTS.register("table", lambda x: write_table(x.rep, x.rows, x.recipe, x.metric))
PARTS.register("transfer", lambda x: write_transfer(x.rep, x.frame, x.metric, x.sparsity))
PARTS.register("layerwise", lambda x: write_layerwise(x.rep, x.runs, x.rows))
PARTS.register("fft", visual.write_fft)
PARTS.register("visual_grid", visual.write_visual_grid)
PARTS.register("snapshots", visual.write_snapshots)
PARTS.register("learning_targets", learning.write_learning_targets)
PARTS.register("learning_curves", learning.write_learning_curves)
PARTS.register("sgld", learning.write_sgld)
PARTS.register("table3", tables.write_table3)
PARTS.register("table5", tables.write_table5)
PARTS.register("classification", classification.write_classification)
PARTS.register("stop", lambda x: write_stop(x.rep, x.rows, x.metric))
PARTS.register("dd_table", lambda x: write_dd_table(x.rep, x.rows, x.metric))
PARTS.register("rules", lambda x: write_rules(x.rep, x.frame))
PARTS.register("gan_grid", lambda x: write_gan_grid(x.rep, x.runs, x.rows, x.sparsity))


def analyze(name: str, uri: str, out: Path, profile: str | None = None, metric: str = "psnr_ema",
            sparsity: float = 0.89, log_to_mlflow: bool = True, parent: str | None = None,
            delta: float = 0.5) -> Report:
    """Write the report of one sweep (``parent``, else the newest of ``profile``) from whatever runs exist
    (a partial sweep shows missing cells)."""
    runs = Runs(uri, name)
    parent = parent or runs.parent(profile)
    sweeps = runs.sweeps()
    profile = str(sweeps.loc[sweeps["run_id"] == parent, "profile"].iloc[0])
    frame = _derive(runs.table(parent))
    out.mkdir(parents=True, exist_ok=True)
    rep = Report(out)
    recipe = RECIPES.get(name) if name in RECIPES else Recipe()
    frame.to_csv(out / "runs.csv", index=False)
    if frame.empty or frame["level"].isna().all():
        rep.add("No data", "the sweep has no logged levels yet.", [out / "runs.csv"])
    else:
        rows = frame[frame["kind"] == "chain"] if "kind" in frame and not recipe.all_kinds else frame
        inputs = Inputs(rep, runs, frame, rows, recipe, name, metric, sparsity, delta)
        for part in recipe.parts:
            PARTS.get(part)(inputs)
        write_platforms(rep, frame)
        rep.add("Data", "Every trial x level as a tidy table (config axes as columns).", [out / "runs.csv"])
    index = write_index(rep, name, profile, frame["run_id"].nunique() if not frame.empty else 0, metric)
    if log_to_mlflow:
        runs.client.log_artifacts(parent, str(out), "analysis")
    rep.sections.append(("index", "", [index]))
    return rep
