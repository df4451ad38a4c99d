"""Which protocol produced a comparison, and how it reads next to the paper's claim (issue 27): Fig. 9's
rewinding under lipsweep's and the reference code's protocols, and Table 4's SynFlow with its skip-cut control.

Each writer reads the tidy frame only; a column absent from older runs reads as its default."""

from __future__ import annotations

import pandas as pd

from .inputs import Inputs
from .stats import markdown

REWIND_ARMS = ("imp_target", "rewind_source", "keep_input_convs", "rewind_budget")
ARM_DEFAULTS = {"imp_target": "observation", "rewind_source": "own", "keep_input_convs": False, "rewind_budget": "full"}
PAPER_FIG9 = ("the paper (Fig. 9): rewinding \"is not beneficial\"; rewinding to 10% and 20% \"even hurt or fail\"")


def with_arms(frame: pd.DataFrame) -> pd.DataFrame:
    """The frame with every arm column present (older runs lack ``rewind_source``: own), as plain strings."""
    data = frame.dropna(subset=["level"]).copy()
    for col, default in ARM_DEFAULTS.items():
        data[col] = data[col].fillna(default).astype(str) if col in data else str(default)
    return data


def rewind_gains(frame: pd.DataFrame, metric: str) -> pd.DataFrame:
    """Per arm and rewind point: the metric minus the rewind-0 chain's at the same seed and level (a shared
    rewind's rewind-0 chain is the own one: theta_0 is each seed's), averaged over the pairs found."""
    data = frame[frame["level"] >= 1].dropna(subset=[metric])
    keys = [k for k in (*REWIND_ARMS, "seed", "level") if k != "rewind_source"]
    base = data[data["rewind"] == 0].drop_duplicates(keys).set_index(keys)[metric]
    rows = []
    for (*arm, rewind), part in data[data["rewind"] > 0].groupby([*REWIND_ARMS, "rewind"]):
        paired = part.set_index(keys)[metric]
        diff = (paired - base.reindex(paired.index)).dropna()
        rows.append({**dict(zip(REWIND_ARMS, arm)), "rewind": rewind,
                     "gain_db": float(diff.mean()) if len(diff) else float("nan"), "pairs": len(diff)})
    return pd.DataFrame(rows)


def write_rewind_protocol(x: Inputs) -> None:
    """Fig. 9 read both ways: lipsweep's (own theta_j, the restoration PSNR) and the reference code's (seed 0's
    theta_j for every seed, Rewind_IMP.py:113-118, and the PSNR of the IMP fit to the clean image, l.197-228)."""
    data = with_arms(x.rows)
    tables = []
    for metric in dict.fromkeys((x.metric, "clean_fit_psnr_ema_peak", "clean_fit_psnr_ema")):
        if metric in data and data[metric].notna().any():
            gains = rewind_gains(data, metric)
            if not gains.empty:
                tables.append((metric, gains))
    if not tables:
        return
    lines, path = [], x.rep.out / "rewind_protocol.md"
    for metric, gains in tables:
        pivot = gains.pivot_table(index=list(REWIND_ARMS), columns="rewind", values="gain_db").round(2)
        lines += [f"Gain of rewinding in `{metric}` (dB, vs rewind 0 of the same arm, paired by seed and level):",
                  "", markdown(pivot), ""]
    path.write_text("\n".join(lines))
    x.rep.add("Rewinding: which protocol", _rewind_sentence(tables[0][1], tables[0][0]), [path])


def _rewind_sentence(gains: pd.DataFrame, metric: str) -> str:
    def mean(**arm: str) -> float:
        sel = gains
        for k, v in arm.items():
            sel = sel[sel[k] == v]
        return float(sel["gain_db"].mean()) if not sel.empty else float("nan")

    own = mean(rewind_source="own", imp_target="observation", keep_input_convs="False")
    shared = mean(rewind_source="shared", keep_input_convs="False")
    return (f"Compared with {PAPER_FIG9}. Here, rewinding to theta_j of the seed's own dense run changes `{metric}` "
            f"by {own:+.2f} dB on average over rewind points and levels (IMP on the observation); rewinding every "
            f"seed to seed 0's theta_j, as the reference code's one rewind file does, by {shared:+.2f} dB. "
            "clean_fit_*: the reference's reported number (the IMP fit to the clean image, its best PSNR), where "
            "IMP fits the clean image. Only the shared, clean-fit rows are like for like with the paper's Fig. 9.")


def write_synflow_mechanism(x: Inputs) -> None:
    """Table 4's SynFlow loss against its mechanism: the skip-cut control (dense but for up1's skip inputs) and
    SynFlow that keeps the skip paths, next to IMP at the same sparsity (docs/science.md section 4, SynFlow)."""
    data = x.rows.dropna(subset=["level", x.metric])
    if "method" not in data or "skip_cut" not in set(data["method"]):
        return
    dense = data[data["level"] == 0][x.metric].mean()
    cut = data[(data["method"] == "skip_cut") & (data["level"] >= 1)]
    first = data[(data["level"] == 1) & (data["method"] != "skip_cut")]
    at20 = first.groupby("method")[x.metric].mean()
    rows = [{"mask": "dense", "sparsity": 0.0, x.metric: dense},
            {"mask": "skip_cut (control)", "sparsity": cut["sparsity"].mean(), x.metric: cut[x.metric].mean()},
            *({"mask": m, "sparsity": first[first["method"] == m]["sparsity"].mean(), x.metric: v}
              for m, v in at20.items())]
    table = pd.DataFrame(rows).set_index("mask")
    table["vs_dense_db"] = table[x.metric] - dense
    path = x.rep.out / "synflow_mechanism.md"
    path.write_text(markdown(table.round(3)) + "\n")
    change = float(at20.get("synflow", float("nan")) - at20.get("imp", float("nan")))
    x.rep.add("SynFlow: the skip cut", (
        f"At the first sparsity of the grid, SynFlow - IMP = {change:+.2f} dB (paper, Table 4, 512 px: -0.10 dB "
        f"at 20%, SynFlow 31.05 vs LIP 31.15). The control that cuts only up1's skip inputs from the dense net scores "
        f"{float(cut[x.metric].mean() - dense):+.2f} dB against dense: both SynFlows cut exactly those weights "
        "(tests/test_pruning.py pins it), so the skip cut is the loss; synflow_keep_skips keeps the skip paths "
        "and ranks the rest by SynFlow. Implementation as Tanaka et al.'s; the paper has no SynFlow code."), [path])
