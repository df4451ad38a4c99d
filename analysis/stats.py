"""Pure table arithmetic on the tidy frame: seed means and stds, transfer matrices, layer profiles."""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np
import pandas as pd

from lipsweep.problems.tasks import TASKS

MATCHED_SPARSITIES = (0.36, 0.59, 0.89, 0.95)


def curve_stats(frame: pd.DataFrame, series: Sequence[str], metric: str) -> pd.DataFrame:
    """Mean and std over seeds of ``metric`` and sparsity per (series..., level); n = seeds present."""
    data = frame.dropna(subset=["level"])
    grouped = data.groupby([*series, "level"], dropna=False)
    out = grouped.agg(sparsity=("sparsity", "mean"), kept=("kept", "mean"), mean=(metric, "mean"),
                      std=(metric, "std"), n=(metric, "count")).reset_index()
    out["std"] = out["std"].fillna(0.0)
    return out


def nearest_level(frame: pd.DataFrame, sparsity: float) -> pd.DataFrame:
    """Per run, the row whose sparsity is nearest ``sparsity`` (ties: the lower level)."""
    data = frame.dropna(subset=["sparsity"]).copy()
    data["gap"] = (data["sparsity"] - sparsity).abs()
    return data.sort_values(["gap", "level"]).groupby("run_id", as_index=False).first()


def given(row: pd.Series, key: str, default: object = None) -> object:
    """A param of the row, or ``default`` where it is absent, None, or NaN (the frame's gap for "not set")."""
    value = row.get(key)
    missing = (value is None or (isinstance(value, float) and np.isnan(value))
               or (isinstance(value, tuple) and not value))
    return default if missing else value


def source_label(row: pd.Series) -> str:
    """Where a transferred mask was found: task, image, or image + the rest of a multi-image set."""
    multi = given(row, "source_multi_images", ())
    image = given(row, "source_image", row.get("image"))
    task = given(row, "source_task", row.get("task"))
    name = f"{image}+{len(multi)}" if multi else image
    return f"{name} / {task}"


def target_label(row: pd.Series) -> str:
    return f"{row['image']} / {row['task']}"


def mask_label(row: pd.Series) -> str:
    """Fig. 4's series: a Multi-LIP mask evaluated on the image, the image's own LIP, or another method's."""
    multi = given(row, "source_multi_images", ())
    if row.get("kind") == "evaluation" and multi:
        return f"Multi-LIP ({1 + len(multi)} images)"
    return "single-image LIP" if row.get("method") == "imp" else str(row.get("method"))


def _own(row: pd.Series) -> bool:
    """Whether the mask was found on the target's own task and (first) image: the reference of its column."""
    return (given(row, "source_image", row["image"]) == row["image"]
            and given(row, "source_task", row["task"]) == row["task"])


def y_metric(metric: str) -> str | None:
    """The Y-channel twin of a PSNR metric (psnr_ema_peak -> ypsnr_ema_peak); None for any other metric."""
    return f"y{metric}" if metric.startswith("psnr") else None


def _scored(at: pd.DataFrame, metric: str) -> pd.DataFrame:
    """Each row's ``score``: the Y-PSNR twin of ``metric`` where the target is super-resolution and the record
    has it (the reference scores SR on Y, ref: Clean_IMP_super-resolution.py:35-36,229), else ``metric``; SR
    targets are labelled "(Y-PSNR)" so the matrix says which cells are Y."""
    y = y_metric(metric)
    sr = at["task"].map(lambda t: t in TASKS and TASKS.get(t).y_psnr).astype(bool)
    if y is None or y not in at or not at.loc[sr, y].notna().any():
        return at.assign(score=at[metric])
    sr = sr & at[y].notna()
    return at.assign(score=at[metric].where(~sr, at[y]),
                     target=at["target"].where(~sr, at["target"] + " (Y-PSNR)"))


def transfer_matrix(frame: pd.DataFrame, metric: str, sparsity: float) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Rows = where the mask was found, columns = where it was evaluated; cells = seed mean of ``metric``
    (its Y-PSNR twin on SR targets, labelled so) at the level nearest ``sparsity``; and the same minus the
    target's own mask in dB (found on the target's image and task; a Multi-LIP set that starts with the
    target image counts as its own)."""
    at = nearest_level(frame, sparsity)
    if at.empty:
        return pd.DataFrame(), pd.DataFrame()
    at["source"] = at.apply(source_label, axis=1)
    at["target"] = at.apply(target_label, axis=1)
    at = _scored(at, metric)
    matrix = at.pivot_table(index="source", columns="target", values="score", aggfunc="mean")
    matrix = matrix.reindex(index=sorted(set(at["source"])), columns=sorted(set(at["target"])))
    own_rows = at[at.apply(_own, axis=1)]
    own = own_rows.groupby("target")["score"].mean().reindex(matrix.columns)
    return matrix, matrix - own


def forward_order(names: Sequence[str]) -> list[str]:
    """Conv names in the order the data flows: encoder down the levels (skip first), decoder back up, head."""
    def key(name: str) -> tuple:
        m = re.match(r"levels\.(\d+)\.(\w+?)(\d*)\.conv$", name)
        if m:
            level, part, idx = int(m.group(1)), m.group(2), int(m.group(3) or 0)
            if part in ("skip", "down"):
                return (0, level, 0 if part == "skip" else idx)
            return (1, -level, idx)
        m = re.match(r"hidden\.(\d+)$", name)
        if m:
            return (0, int(m.group(1)), 0)
        return (2, 0, 0)
    return sorted(names, key=key)


def layer_label(name: str) -> str:
    m = re.match(r"levels\.(\d+)\.(\w+?)(\d*)\.conv$", name)
    if m:
        level, part, idx = m.groups()
        role = {"skip": "skip", "down": "enc", "up": "dec"}[part]
        return f"L{level} {role}{idx}"
    return "out" if name == "head" else name


def mean_std(values: pd.Series, expected: int | None = None) -> str:
    """"mean ± std", with "(n=k)" where fewer seeds than ``expected`` reached this cell; "missing" if none; a
    single seed is its value alone (one sample has no spread to show)."""
    values = values.dropna()
    if values.empty:
        return "missing"
    digits = 2 if abs(values.mean()) >= 1 else 4  # PSNR in dB; per-pixel MSE (Table 1) needs four
    text = f"{values.mean():.{digits}f}" + (f" ± {values.std(ddof=1):.{digits}f}" if len(values) > 1 else "")
    return text + (f" (n={len(values)})" if expected and len(values) < expected else "")


def markdown(table: pd.DataFrame, index: bool = True) -> str:
    """A GitHub markdown table (no extra dependency)."""
    frame = table.reset_index() if index else table
    head = [str(c) for c in frame.columns]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(str(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join(lines) + "\n"
