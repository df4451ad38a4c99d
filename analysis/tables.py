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


# Table 1 (per-pixel MSE in [-1, 1]) at sparsity 0/20/36/49/59/67/74%, i.e. IMP levels 0-6 at 20% per level.
# Its numbers come from the reference code's protocol (fine-tuned sparse generators, random fine-tuned too):
# lipsweep's ``gan_eval: finetuned`` (docs/science.md section 7); ``pretrained`` rows get no paper column.
PAPER_TABLE1 = {("cs", "random"): (.0725, .0963, .1165, .1276, .2184, .2086, .3655),
                ("cs", "imp"): (.0725, .0744, .0732, .0737, .0711, .0728, .0728),
                ("inpaint", "random"): (.0541, .0682, .0748, .0810, .1142, .1904, .2195),
                ("inpaint", "imp"): (.0541, .0542, .0504, .0514, .0506, .0524, .0509)}
GAN_PROTOCOL = {"finetuned": "fine-tuned sparse G (the reference code's)", "pretrained": "pretrained G x mask"}


def _paper_table1(task: str, method: str) -> tuple[float, ...] | None:
    """Table 1's row for a task (any inpainting variant reads the paper's inpainting row) and method."""
    return PAPER_TABLE1.get(("inpaint" if str(task).startswith("inpaint") else str(task), str(method)))


def _table1_rows(one: pd.DataFrame, protocol: str, task: str, method: str, metric: str) -> list[dict]:
    """One (protocol, task, method): mean metric per level over images and seeds, and relative to the dense
    level's mean; the paper's cell and ratio beside it for ``finetuned`` only."""
    means = one.groupby("level")[metric].agg(["mean", "std", "count"])
    dense = means["mean"].get(0, np.nan)
    paper = _paper_table1(task, method) if protocol == "finetuned" else None
    rows = []
    for level, cell in means.iterrows():
        level = int(level)
        ref = paper[level] if paper is not None and level < len(paper) else np.nan
        rows.append({"gan_eval": protocol, "weights scored": GAN_PROTOCOL.get(protocol, protocol), "task": task,
                     "method": method, "level": level,
                     "sparsity": float(one.loc[one["level"] == level, "sparsity"].mean()), "mean": cell["mean"],
                     "std": cell["std"], "n": int(cell["count"]), "x dense": cell["mean"] / dense,
                     "paper": ref, "paper x dense": ref / paper[0] if paper is not None else np.nan})
    return rows


def write_table1(x: Inputs) -> None:
    """Table 1: per protocol (``gan_eval``), task and method, the mean per-pixel MSE at each level and its ratio
    to the dense level; the paper's numbers beside the ``finetuned`` rows only, the protocol they come from."""
    data = x.rows.dropna(subset=["level", x.metric])
    if data.empty:
        x.rep.add("Table 1", "no logged levels yet.", [])
        return
    data = data.assign(gan_eval=data["gan_eval"].fillna("pretrained") if "gan_eval" in data else "pretrained")
    rows = [r for (protocol, task, method), one in data.groupby(["gan_eval", "task", "method"])
            for r in _table1_rows(one, str(protocol), str(task), str(method), x.metric)]
    tidy = pd.DataFrame(rows)
    tidy.round(4).to_csv(x.rep.out / "table1.csv", index=False)
    keys = ["gan_eval", "task", "method"]
    tidy["cell"] = tidy.apply(lambda r: f"{r['mean']:.4f} ({r['x dense']:.2f}x)"
                              + (f" / paper {r['paper']:.4f} ({r['paper x dense']:.2f}x)"
                                 if np.isfinite(r["paper"]) else ""), axis=1)
    tidy["column"] = tidy.apply(lambda r: f"L{r['level']} {100 * r['sparsity']:.0f}%", axis=1)
    table = tidy.pivot_table(index=keys, columns="column", values="cell", aggfunc="first").fillna("missing")
    (x.rep.out / "table1.md").write_text(markdown(table))
    x.rep.add("Table 1", f"Mean {x.metric} over images and seeds per level (in brackets: over the dense level's), "
              "one row per gan_eval x task x method. gan_eval says which weights produced each number: finetuned = "
              f"{GAN_PROTOCOL['finetuned']}, the protocol of the paper's Table 1, whose numbers (and ratios) follow "
              f"'/ paper' in those rows only; pretrained = {GAN_PROTOCOL['pretrained']}, no paper column. "
              "The paper's inpainting row is its DIP-mask inpainting; lipsweep's is a centre hole.",
              [x.rep.out / "table1.md", x.rep.out / "table1.csv"])
