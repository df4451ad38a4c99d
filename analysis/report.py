"""``lipsweep analyze NAME``: every figure and table an experiment calls for, an index.md that shows them,
and the same files logged to the sweep's parent MLflow run."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from lipsweep.core.paths import IMAGES, artifact
from lipsweep.core.registry import Registry

from . import classification, early_stop, figures, learning, protocols, tables, visual
from .curves import recipe_panels, series_of, write_curves, write_layerwise, write_table
from .inputs import Inputs, Recipe, Report
from .lines import run_names
from .reading import write_reading
from .recipes import RECIPES  # users read an experiment's recipe as report.RECIPES
from .runs import Runs
from .stats import (
    markdown,
    mask_label,
    mean_std,
    nearest_level,
    source_label,
    transfer_matrix,
    y_metric,
)


def _derive(frame: pd.DataFrame) -> pd.DataFrame:
    frame = frame.copy()
    if "multi_images" in frame:
        frame["images"] = frame["multi_images"].apply(lambda m: f"{1 + len(m or ())} image(s)")
    if "kind" in frame and not frame.empty:
        frame["source"] = frame.apply(source_label, axis=1)
        frame["mask"] = frame.apply(mask_label, axis=1)
    if "model" in frame and "width" in frame:
        frame["model_width"] = frame["model"].astype(str) + "-" + frame["width"].astype(str)
    if "method" in frame and not frame.empty:
        frame["series"] = frame.apply(series_of, axis=1)  # Fig. 3's legend: the method and IMP's variants
    return frame


def _unset(value: object) -> bool:
    return value is None or (isinstance(value, tuple) and not value) or (isinstance(value, float) and np.isnan(value))


def tidy_csv(frame: pd.DataFrame, path: Path) -> Path:
    """runs.csv: the tidy table without the columns no run filled (metrics of other kinds, unset params)."""
    empty = [c for c in frame if frame[c].map(_unset).all()]
    frame.drop(columns=empty).to_csv(path, index=False)
    return path


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
    y = y_metric(metric)
    rep.add("Transfer matrix", f"Rows: where the mask was found; columns: where it was evaluated; cells: {metric} "
            f"at the level nearest {100 * sparsity:.0f}% sparsity, and the same relative to the target's own mask. "
            + (f"Super-resolution columns, marked (Y-PSNR), hold {y}: the reference scores SR on the Y channel "
               "(Fig. 5, ref: Clean_IMP_super-resolution.py)." if y and any("(Y-PSNR)" in c for c in matrix.columns)
               else "") + f" Drawn from {run_names(nearest_level(frame, sparsity))}.", files)


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
    """Fig. 8: per task and protocol (``gan_eval``: the two never share a row), one image and seed: truth,
    observation, dense, and every method at the level nearest ``sparsity`` (or the sparsest level reached)."""
    data = frame.dropna(subset=["level"])
    if data.empty:
        rep.add("Reconstructions", "no logged levels yet.", [])
        return
    first = data.sort_values(["seed", "image"]).iloc[0]
    pick = data[(data["image"] == first["image"]) & (data["seed"] == first["seed"])]
    level = int(nearest_level(pick[pick["level"] > 0], sparsity)["level"].iloc[0]) if (pick["level"] > 0).any() else 0
    by = ["task", "gan_eval"] if "gan_eval" in pick and pick["gan_eval"].notna().any() else ["task"]
    rows = {" ".join(map(str, k)): _gan_row(runs, one, level) for k, one in pick.groupby(by)}
    path = figures.grid(rows, rep.out / "reconstructions.png",
                        f"{first['image']}, seed {first['seed']}: level {level} (Fig. 8)")
    rep.add("Reconstructions", "Per task (and gan_eval, the weights scored: finetuned or pretrained x mask): the "
            "truth, the observation (inpainting), the dense generator's and each method's restoration at the "
            f"sparsest level (the layout of Fig. 8). Drawn from {run_names(pick)}.", [path])


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
    path = figures.curves(recipe_panels(frame, Recipe(series=("method",)), "imp_loss"), "imp_loss",
                          rep.out / "curves_imp_loss.png", "IMP loss per level (what the stop rule reads)", marks)
    rep.add("IMP stopping rule", f"Where the rule fired and which level it chose, vs the oracle-best level by "
            f"{metric} (Fig. 13); the IMP loss curves it reads. Drawn from {run_names(frame)}.", [path, rep.out / "stop_rule.md", rep.out / "stop_rule.csv"])


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
    """The online stop-rule search: every proposed rule with its replayed score, best first; a flat objective
    (every rule scored the same) is said, not ranked."""
    cols = [c for c in ("label", "k", "tolerance", "offset", "smooth", "objective", "sparsity", "psnr_change_db",
                        "psnr_loss") if c in frame]
    table = frame.dropna(subset=["objective"])[cols].sort_values("objective", ascending=False)
    table.to_csv(rep.out / "rules.csv", index=False)
    (rep.out / "rules.md").write_text(markdown(table.round(4), index=False))
    flat = table["objective"].nunique() == 1
    sentence = ("Each rule Optuna proposed, scored by replaying the stored chains: objective = sparsity minus the "
                "penalty per dB lost beyond delta; PSNR change vs dense, positive = better; best first.")
    if flat:
        sentence = (f"All {len(table)} rules scored {table['objective'].iloc[0]:.5f}: a flat objective, no rule found "
                    "(`lipsweep stop-search` says what the chains lack). " + sentence)
    rep.add("Proposed stop rules", sentence, [rep.out / "rules.md", rep.out / "rules.csv"])


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
    """index.md: the reading paragraph first, then each section with its figures; a markdown table is printed
    once, the ones the section only links (``Report.linked``) are not."""
    lines = [f"# {name} [{profile}]", "", *([rep.reading, ""] if rep.reading else []),
             f"{n_runs} trial runs; quality metric `{metric}`"
             + (" (an oracle: chosen with the clean image)" if metric == "psnr_peak" else "") + ".", ""]
    for title, sentence, files in rep.sections:
        lines += [f"## {title}", "", sentence, ""]
        for f in files:
            rel = f.relative_to(rep.out).as_posix()
            lines.append(f"![{rel}]({rel})" if f.suffix == ".png" else f"- [{rel}]({rel})")
            if f.suffix == ".md" and f not in rep.linked:
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
PARTS.register("early_stop", early_stop.write_early_stop)
PARTS.register("dd_table", lambda x: write_dd_table(x.rep, x.rows, x.metric))
PARTS.register("rules", lambda x: write_rules(x.rep, x.frame))
PARTS.register("gan_grid", lambda x: write_gan_grid(x.rep, x.runs, x.rows, x.sparsity))
PARTS.register("table1", tables.write_table1)
PARTS.register("rewind_protocol", protocols.write_rewind_protocol)
PARTS.register("synflow_mechanism", protocols.write_synflow_mechanism)


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
    tidy_csv(frame, out / "runs.csv")
    if frame.empty or frame["level"].isna().all():
        rep.add("No data", "the sweep has no logged levels yet.", [out / "runs.csv"])
    else:
        rows = frame[frame["kind"] == "chain"] if "kind" in frame and not recipe.all_kinds else frame
        inputs = Inputs(rep, runs, frame, rows, recipe, name, metric, sparsity, delta)
        for part in recipe.parts:
            PARTS.get(part)(inputs)
        write_reading(inputs)
        write_platforms(rep, frame)
        rep.add("Data", "Every trial x level as a tidy table (config axes as columns).", [out / "runs.csv"])
    index = write_index(rep, name, profile, frame["run_id"].nunique() if not frame.empty else 0, metric)
    if log_to_mlflow:
        runs.client.log_artifacts(parent, str(out), "analysis")
    rep.sections.append(("index", "", [index]))
    return rep
