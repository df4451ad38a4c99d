"""Early stopping without the clean image (issue 29): per task and subnetwork (the dense DIP, LIPs at ~59% and
~89%, random pruning at the same sparsities), what the detector returns (``psnr_es``) next to the oracle peak
(``psnr_ema_peak``) and the final output (``psnr_ema``), where it stops vs where the peak is, and the compute it
saves per IMP chain. The detector and its record are ``lipsweep/fitting/early_stop.py``; ``es_gap`` is the
oracle peak of the returned output minus ``psnr_es`` (never negative), ``es_saved`` the iterations after the
detection is confirmed (0 where it is not), ``es_peak_width`` the iterations within 0.5 dB of the peak."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from .figures import _panel_grid, _save
from .inputs import Inputs
from .lines import run_names
from .stats import markdown
from .tables import TASK_ORDER

# (label, method, target sparsity): IMP at 20% per level reaches 59.04% at level 4 and 89.26% at level 10
SUBNETS = (("dense", None, 0.0), ("LIP ~59%", "imp", 0.5904), ("LIP ~89%", "imp", 0.8926),
           ("random ~59%", "random", 0.5904), ("random ~89%", "random", 0.8926))
MATCH = 0.03  # a level within this of a target sparsity stands for it
TOLERANCE = 0.1  # dB: a smaller difference of gaps counts as none
COLLAPSE_DB = 5.0  # dB below the dense net's oracle peak (same image, task, seed): a run that never fitted the image
COLUMNS = {"psnr_ema_peak": "oracle peak", "psnr_es": "ES", "psnr_ema": "final", "es_gap": "gap",
           "es_iter": "ES iter", "ema_peak_iter": "peak iter", "es_saved": "saved", "es_peak_width": "peak width"}
DIGITS = {"psnr_ema_peak": 2, "psnr_es": 2, "psnr_ema": 2, "es_gap": 2}  # dB; the rest are iterations (0)
PAPER = ('ES-WMV (Wang et al., "Early Stopping for Deep Image Prior", TMLR 2023; arXiv 2112.06074v4) says it '
         '"consistently detects near-peak performance in various computational imaging tasks and DIP variants" '
         "(abstract). Its per-task and per-noise-level gaps could not be verified from the stored text of the "
         "paper (only its first page is searchable here), so no published gap is set against these numbers.")


def subnets(rows: pd.DataFrame) -> pd.DataFrame:
    """One row per (image, task, seed, subnetwork) with a detector's record: the dense level once (every chain
    of a trial shares it), each method's level nearest each target sparsity (within ``MATCH``)."""
    data = rows.dropna(subset=["level", "es_gap"]) if "es_gap" in rows else rows.iloc[:0]
    keys = [k for k in ("image", "task", "seed") if k in data]
    parts = [data[data["level"] == 0].drop_duplicates(keys).assign(subnet=SUBNETS[0][0])]
    for label, method, target in SUBNETS[1:]:
        pruned = data[(data["level"] > 0) & (data["method"] == method)]
        near = pruned.assign(_off=(pruned["sparsity"] - target).abs())
        near = near[near["_off"] <= MATCH].sort_values(["_off", "level"]).drop_duplicates("run_id")
        parts.append(near.drop(columns="_off").assign(subnet=label))
    out = pd.concat(parts, ignore_index=True)
    return out.assign(budget=out["es_iters_run"] + out["es_saved"])


def cell(values: pd.Series, digits: int) -> str:
    """'mean ± std' at ``digits`` decimals; one value alone (one seed has no spread); 'missing' for none."""
    values = values.dropna()
    if values.empty:
        return "missing"
    return f"{values.mean():.{digits}f}" + (f" ± {values.std():.{digits}f}" if len(values) > 1 else "")


def seed_means(part: pd.DataFrame, column: str) -> pd.Series:
    """Per seed, the mean over the images: what "mean ± std over seeds" spreads."""
    return part.groupby("seed")[column].mean()


def _tasks(data: pd.DataFrame) -> list[str]:
    present = list(dict.fromkeys(data["task"]))
    return sorted(present, key=lambda t: (TASK_ORDER.index(t) if t in TASK_ORDER else len(TASK_ORDER), t))


def _labels(data: pd.DataFrame) -> list[str]:
    return [label for label, _, _ in SUBNETS if label in set(data["subnet"])]


def table_rows(data: pd.DataFrame) -> tuple[list[dict], list[dict]]:
    """Per task and subnetwork: the shown row (mean ± std over seeds) and the numeric one (means, stds)."""
    shown, numbers = [], []
    for task in _tasks(data):
        for label in _labels(data[data["task"] == task]):
            part = data[(data["task"] == task) & (data["subnet"] == label)]
            saved = seed_means(part.assign(_pct=100 * part["es_saved"] / part["budget"]), "_pct")
            head = {"task": task, "subnetwork": label, "sparsity": f"{100 * part['sparsity'].mean():.1f}%",
                    "runs": len(part)}
            shown.append({**head, **{name: cell(seed_means(part, col), DIGITS.get(col, 0))
                                     for col, name in COLUMNS.items()},
                          "saved % of budget": cell(saved, 1),
                          "confirmed": f"{int(part['es_confirmed'].sum())}/{len(part)}"})
            numbers.append({**head, "sparsity": part["sparsity"].mean(), "confirmed": int(part["es_confirmed"].sum()),
                            "saved_pct": saved.mean(), "saved_pct_std": saved.std(),
                            **{col: seed_means(part, col).mean() for col in COLUMNS},
                            **{f"{col}_std": seed_means(part, col).std() for col in COLUMNS}})
    return shown, numbers


def draw_gaps(data: pd.DataFrame, path: Path, title: str) -> Path:
    """One panel per task: a bar per subnetwork (mean over seeds of the per-seed gap, ±1 std over seeds) and a
    point per run (image, seed); one colour per subnetwork in every panel, one legend below."""
    tasks, labels = _tasks(data), _labels(data)
    colours = {label: f"C{i}" for i, label in enumerate(labels)}
    fig, axes = _panel_grid(len(tasks), 3, (4.2, 3.4))
    jitter = np.random.default_rng(0)
    for ax, task in zip(axes.flat, tasks):
        for i, label in enumerate(labels):
            part = data[(data["task"] == task) & (data["subnet"] == label)]
            if part.empty:
                continue
            means = seed_means(part, "es_gap")
            ax.bar(i, means.mean(), 0.7, yerr=means.std() if len(means) > 1 else None, color=colours[label],
                   alpha=0.6, capsize=3)
            ax.scatter(i + jitter.uniform(-0.15, 0.15, len(part)), part["es_gap"], s=12, c="k", zorder=3)
        ax.set_xticks(range(len(labels)), labels, rotation=30, ha="right", fontsize=8)
        ax.set_ylabel("detection gap: oracle peak - ES (dB)", fontsize=8)
        ax.set_title(task, fontsize=9)
        ax.grid(alpha=0.3, axis="y")
    handles = [plt.Rectangle((0, 0), 1, 1, color=colours[label], alpha=0.6) for label in labels]
    handles.append(plt.Line2D([], [], ls="", marker="o", ms=4, c="k"))
    fig.suptitle(title, fontsize=10)
    return _save(fig, path, legend=(handles, [*labels, "one run (image, seed)"]))


def _mean_over_tasks(numbers: pd.DataFrame, label: str, column: str) -> float:
    return float(numbers.loc[numbers["subnetwork"] == label, column].mean())


def _verdict(diff: float) -> str:
    return "easier" if diff < -TOLERANCE else "harder" if diff > TOLERANCE else "about as easy"


def ease_sentence(numbers: pd.DataFrame) -> str:
    """(a) Do LIPs make early stopping easier or harder: each subnetwork's gap and peak width (means over the
    tasks of the seed means), and each LIP's gap against the dense net's and against random at its sparsity."""
    labels = [label for label, _, _ in SUBNETS if label in set(numbers["subnetwork"])]
    shown = "; ".join(f"{label} {_mean_over_tasks(numbers, label, 'es_gap'):.2f} dB (peak width "
                      f"{_mean_over_tasks(numbers, label, 'es_peak_width'):.0f} it)" for label in labels)
    pairs = []
    for lip, other in (("LIP ~59%", "dense"), ("LIP ~89%", "dense"), ("LIP ~59%", "random ~59%"),
                       ("LIP ~89%", "random ~89%")):
        if lip in labels and other in labels:
            diff = _mean_over_tasks(numbers, lip, "es_gap") - _mean_over_tasks(numbers, other, "es_gap")
            pairs.append(f"{lip} vs {other} {diff:+.2f} dB: {_verdict(diff)} to stop early")
    versus = (f" Gap differences ({'; '.join(pairs)}; within {TOLERANCE:g} dB counts as none)." if pairs else "")
    return f"Detection gap, mean over tasks ({', '.join(_tasks(numbers))}): {shown}.{versus}"


def rising_sentence(data: pd.DataFrame) -> str:
    """Where the oracle peak lies in the last tenth of the budget the output was still improving: a gap there
    measures a stop before the end, not a missed peak (noise-free inpainting and SR at CPU scale)."""
    late = data[data["ema_peak_iter"] > 0.9 * data["budget"]]
    if late.empty:
        return ""
    tasks = ", ".join(f"{t} {int((late['task'] == t).sum())}/{int((data['task'] == t).sum())}" for t in _tasks(late))
    return (f" In {len(late)} of {len(data)} runs the oracle peak lies in the last tenth of the budget ({tasks}): "
            "the output was still improving, so there a gap measures a stop before the end, not a missed peak.")


def collapsed_sentence(data: pd.DataFrame) -> str:
    """Runs whose oracle peak lies ``COLLAPSE_DB`` below the dense net's on the same image, task and seed never
    fitted the image (a random mask at high sparsity can cut the hourglass): their flat curves make a gap
    trivially small, so a subnetwork's small gap must not be read as easy early stopping where they are among
    its runs."""
    keys = [k for k in ("image", "task", "seed") if k in data]
    dense = data[data["subnet"] == "dense"].set_index(keys)["psnr_ema_peak"]
    pruned = data[data["subnet"] != "dense"]
    below = dense.reindex(pd.MultiIndex.from_frame(pruned[keys])).to_numpy() - pruned["psnr_ema_peak"].to_numpy()
    low = pruned[below > COLLAPSE_DB]
    if low.empty:
        return ""
    runs = "; ".join(f"{r.subnet} {r.task} seed {int(r.seed)} ({r.psnr_ema_peak:.1f} dB)" for r in low.itertuples())
    return (f" {len(low)} of {len(pruned)} pruned runs never fitted the image (an oracle peak more than "
            f"{COLLAPSE_DB:g} dB below the dense net's: {runs}); their flat curves make the gap trivially small, so "
            "their subnetwork's gap above does not show easy early stopping.")


def chain_savings(data: pd.DataFrame) -> pd.DataFrame:
    """(b) Per IMP chain: iterations after confirmed detections over the budgets, over its pruned levels (1..L)
    and over the whole chain (with the dense level 0)."""
    rows = []
    for run_id, chain in data[data["method"] == "imp"].groupby("run_id"):
        pruned = chain[chain["level"] > 0]
        rows.append({"run_id": run_id, "task": chain["task"].iloc[0], "levels": int(pruned["level"].max()),
                     "pruned": pruned["es_saved"].sum() / pruned["budget"].sum(),
                     "whole": chain["es_saved"].sum() / chain["budget"].sum()})
    return pd.DataFrame(rows)


def _spread(values: pd.Series) -> str:
    """'38.1% ± 4.2%' over several values, '38.1%' for one."""
    return f"{100 * values.mean():.1f}%" + (f" ± {100 * values.std():.1f}%" if len(values) > 1 else "")


def saving_sentence(rows: pd.DataFrame) -> str:
    """(b) The share of an IMP chain's iterations ES saves (would save, where the fits ran their full budget)."""
    data = rows.dropna(subset=["level", "es_saved"]).assign(budget=lambda f: f["es_iters_run"] + f["es_saved"])
    chains = chain_savings(data)
    if chains.empty or chains["levels"].max() < 1:
        return "No IMP chain with a pruned level and a detector's record yet: no saving per chain to report."
    stopped = "es_stop" in data and bool(data["es_stop"].fillna(False).astype(bool).all())
    verb = "saved" if stopped else ("would save (es_stop false: every fit ran its full budget, so the oracle "
                                    "stays comparable)")
    per_task = ", ".join(f"{task} {_spread(one['pruned'])}" for task, one in chains.groupby("task", sort=False))
    return (f"Compute: early stopping {verb} {_spread(chains['pruned'])} of an IMP chain's iterations over its "
            f"levels 1-{int(chains['levels'].max())}, and {_spread(chains['whole'])} over the whole chain with the "
            f"dense level 0 (mean ± std over {len(chains)} chains; levels 1 on, per task: {per_task}).")


def write_early_stop(x: Inputs) -> None:
    """The section and the reading: table per task and subnetwork, the gap figure, the paragraph (a) and (b)."""
    data = subnets(x.rows)
    if data.empty:
        x.rep.add("Early stopping", "no level with a detector's record (es_gap) yet: run with early_stop set.", [])
        return
    shown, numbers = table_rows(data)
    out = x.rep.out
    pd.DataFrame(numbers).round(4).to_csv(out / "early_stop.csv", index=False)
    (out / "early_stop.md").write_text(markdown(pd.DataFrame(shown), index=False))
    figure = draw_gaps(data, out / "early_stop_gap.png", f"{x.name}: detection gap per subnetwork and task")
    reading = (f"**Reading.** {ease_sentence(pd.DataFrame(numbers))}{collapsed_sentence(data)}{rising_sentence(data)} "
               f"{saving_sentence(x.rows)} {PAPER}")
    (out / "early_stop_reading.md").write_text(reading + "\n")
    x.rep.reading = reading
    x.rep.add("Early stopping", "Per task and subnetwork (dense = level 0; LIP / random = the level within "
              f"{MATCH:g} of ~59% or ~89% sparsity): the oracle peak (psnr_ema_peak), what the detector returns (ES, "
              "psnr_es), the final output (psnr_ema), their gap (es_gap), the detected vs the peak iteration, the "
              "iterations saved after a confirmed detection (es_saved; as % of the budget), detections confirmed "
              "within the budget, and the peak's width (iterations within 0.5 dB of it); PSNR in dB, mean ± std "
              "over seeds of the per-seed means over images. Figure: bars = that mean ± std, points = runs. "
              f"Drawn from {run_names(data)}.",
              [figure, out / "early_stop.md", out / "early_stop.csv", out / "early_stop_reading.md"],
              (out / "early_stop_reading.md",))
