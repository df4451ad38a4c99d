"""The paper's parameter-count and benchmark tables: the dense DIP vs its LIP ticket of ~0.2M non-zero
parameters on bird (Table 3), and DIP vs the 73.79%-sparse LIP over image sets and tasks (Table 5), each
next to the paper's numbers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from lipsweep.problems.images import IMAGE_SUFFIXES

from .inputs import Inputs
from .stats import markdown, mean_std, nearest_level
from .visual import imp_levels

# Table 3 (bird, denoising, PSNR dB): non-zero parameters and PSNR of the dense DIP and its LIP ticket.
PAPER_TABLE3 = {"dense": ("2.2M", 30.35), "LIP": ("0.2M", 30.61)}
TABLE3_SHARE = 0.2 / 2.2  # the LIP ticket's non-zero parameters as a share of the dense net's
# Table 5 (PSNR dB): (task, paper's set) -> (DIP 2.2M, LIP 0.6M at 73.79% sparsity). The DIP column is
# Arican et al. (2022), Table 2; BM3D = the 11 classic grey images, CBM3D = colour denoising.
PAPER_TABLE5 = {("denoise", "BM3D"): (27.87, 28.27), ("denoise", "Set12"): (27.92, 28.12),
                ("denoise", "CBM3D"): (28.93, 29.45), ("inpaint", "BM3D"): (31.04, 32.44),
                ("inpaint", "Set12"): (31.00, 31.78), ("sr4", "Set5"): (29.89, 30.52), ("sr8", "Set5"): (25.88, 26.17),
                ("sr4", "Set14"): (27.00, 27.31), ("sr8", "Set14"): (24.15, 24.31)}
TABLE5_SPARSITY = 0.7379  # LIP (0.6M): IMP level 6 at 20% per level
TABLE5_TOLERANCE = 0.02  # a chain that has not reached ~73.8% has no LIP cell
BM3D_SET = "inpainting_classic11"  # the shipped 11-image grey set stands for the BM3D set
TASK_ORDER = ("denoise", "inpaint", "sr4", "sr8")


def _count_columns(data: pd.DataFrame) -> tuple[str, str]:
    """Non-zero parameters of the whole net where logged (Table 3 counts them), else kept conv weights."""
    if "nonzero_params" in data and data["nonzero_params"].notna().any():
        return "nonzero_params", "non-zero parameters of the whole net"
    return "kept", "kept conv weights (no nonzero_params logged)"


def _table3_rows(one: pd.DataFrame, metric: str) -> list[dict]:
    """Dense and the level whose mean non-zero count is nearest 0.2/2.2 of the dense count."""
    col, _ = _count_columns(one)
    counts = one.groupby("level")[col].mean().dropna()
    if 0 not in counts.index or not (counts.index > 0).any():
        return []
    target = float(counts.loc[0]) * TABLE3_SHARE
    pruned = counts[counts.index > 0]
    lip = int((pruned - target).abs().sort_index().idxmin())
    rows = []
    for model, level in (("dense", 0), ("LIP", lip)):
        at = one[one["level"] == level]
        paper_params, paper_psnr = PAPER_TABLE3[model]
        rows.append({"model": model, "level": level, "parameters": int(round(counts.loc[level])),
                     "parameters (M)": round(counts.loc[level] / 1e6, 3),
                     "share of dense": round(counts.loc[level] / counts.loc[0], 4),
                     "sparsity": f"{100 * at['sparsity'].mean():.2f}%", metric: mean_std(at[metric]),
                     f"{metric} mean": round(float(at[metric].mean()), 4), "seeds": int(at[metric].count()),
                     "paper parameters": paper_params, "paper PSNR": paper_psnr})
    return rows


def write_table3(x: Inputs) -> None:
    """Table 3: per image and task (the paper: bird, denoising), the dense net and its LIP ticket with ~0.2M
    of 2.2M non-zero parameters (nearest level by the seed-mean count), metric mean ± std over seeds."""
    data = imp_levels(x.rows)
    keys = [k for k in ("image", "task") if k in data]
    rows = []
    if x.metric in data and not data.empty:
        for group, one in data.groupby(keys, dropna=False) if keys else [((), data)]:
            rows += [{**dict(zip(keys, group)), **r} for r in _table3_rows(one, x.metric)]
    if not rows:
        x.rep.add("Table 3", "no chain with a dense and a pruned level logged yet.", [])
        return
    table = pd.DataFrame(rows)
    table.to_csv(x.rep.out / "table3.csv", index=False)
    (x.rep.out / "table3.md").write_text(markdown(table, index=False))
    x.rep.add("Table 3", f"The dense net and the LIP level whose {_count_columns(data)[1]} are nearest "
              f"{TABLE3_SHARE:.3f} of the dense net's (the paper's 0.2M of 2.2M); {x.metric} mean ± std over seeds, "
              "next to the paper's numbers (bird, denoising).", [x.rep.out / "table3.md", x.rep.out / "table3.csv"])


def image_set(image: object) -> str:
    """The set an image belongs to: 'Set12/01' -> 'Set12'; a file path -> its folder's name."""
    text = str(image)
    if Path(text).suffix.lower() in IMAGE_SUFFIXES or text.startswith(("/", "~", ".")):
        return Path(text).parent.name
    return text.rsplit("/", 1)[0] if "/" in text else text


def paper_set(task: str, name: str, channels: object) -> str | None:
    """The row of Table 5 a (task, set) compares with; None where the paper has none."""
    if task in ("sr4", "sr8"):
        return name if name in ("Set5", "Set14") else None
    if name == BM3D_SET:
        return "BM3D"
    if name == "Set12":
        return "Set12"
    return "CBM3D" if task == "denoise" and channels != 1 else None


def _set_metric(one: pd.DataFrame, task: str, metric: str) -> str:
    """Super-resolution is scored on luminance (Y-PSNR) where the sweep logged it."""
    y = f"y{metric}"
    return y if task in ("sr4", "sr8") and y in one and one[y].notna().any() else metric


def _table5_row(one: pd.DataFrame, task: str, name: str, channels: object, metric: str) -> dict:
    """DIP (level 0) and LIP (the level nearest 73.79%): mean over images and seeds, ± std over seeds of the
    per-seed set means."""
    m = _set_metric(one, task, metric)
    dense = one[one["level"] == 0]
    lip = nearest_level(one[one["level"] > 0], TABLE5_SPARSITY)
    lip = lip[(lip["sparsity"] - TABLE5_SPARSITY).abs() <= TABLE5_TOLERANCE]
    dip_seeds, lip_seeds = dense.groupby("seed")[m].mean(), lip.groupby("seed")[m].mean()
    row = paper_set(task, name, channels)
    paper = PAPER_TABLE5.get((task, row), (np.nan, np.nan))
    return {"task": task, "set": name, "channels": channels, "paper set": row or "-",
            "images": int(one["image"].nunique()), "seeds": int(dip_seeds.count()), "metric": m,
            "DIP": mean_std(dip_seeds), "LIP": mean_std(lip_seeds),
            "LIP sparsity": f"{100 * lip['sparsity'].mean():.2f}%" if not lip.empty else "missing",
            "DIP mean": dip_seeds.mean(), "LIP mean": lip_seeds.mean(), "paper DIP": paper[0], "paper LIP": paper[1],
            "LIP - DIP": lip_seeds.mean() - dip_seeds.mean(), "paper LIP - DIP": paper[1] - paper[0]}


def write_table5(x: Inputs) -> None:
    """Table 5: per task and image set, DIP (dense) vs LIP (~73.79% sparse, 0.6M) by the report metric
    (Y-PSNR for super-resolution where logged), next to the paper's DIP and LIP columns."""
    data = imp_levels(x.rows)
    if data.empty or x.metric not in data or not {"task", "image", "seed"} <= set(data):
        x.rep.add("Table 5", "no benchmark chains logged yet.", [])
        return
    data = data.assign(set=data["image"].map(image_set),
                       channels=data["channels"] if "channels" in data else np.nan)
    rows = [_table5_row(one, task, name, channels, x.metric)
            for (task, name, channels), one in data.groupby(["task", "set", "channels"], dropna=False)]
    table = pd.DataFrame(rows)
    table["order"] = table["task"].map({t: i for i, t in enumerate(TASK_ORDER)}).fillna(len(TASK_ORDER))
    table = table.sort_values(["order", "set"]).drop(columns="order").round(4)
    table.to_csv(x.rep.out / "table5.csv", index=False)
    shown = table.drop(columns=["DIP mean", "LIP mean"]).fillna("-")
    (x.rep.out / "table5.md").write_text(markdown(shown, index=False))
    x.rep.add("Table 5", f"Per task and image set: DIP (dense) and LIP (the level nearest {100 * TABLE5_SPARSITY:.2f}% "
              f"sparsity), {x.metric} (Y-PSNR for super-resolution where logged) averaged over the set's images, "
              "mean ± std over seeds; the paper's columns from its Table 5 (BM3D = inpainting_classic11, CBM3D = "
              "a colour denoising set).", [x.rep.out / "table5.md", x.rep.out / "table5.csv"])
