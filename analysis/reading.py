"""The paragraph a report leads with: the measured result next to the paper's claim (the recipe's ``claim``):
each other value of the primary axis minus the baseline, paired by image, task, seed and level (a level is the
same sparsity in both chains: IMP and its alternatives prune the same share per level), in the main arm."""

from __future__ import annotations

import numpy as np
import pandas as pd

from .inputs import Claim, Inputs, Recipe
from .lines import PAIR_KEYS, in_arm, line_label, main_arm, text
from .stats import markdown

LOWER_IS_BETTER = ("mse", "imp_loss", "loss")
MATCH = 0.03  # a level within this of a paper sparsity stands for it


def gaps(data: pd.DataFrame, axis: str, baseline: object, metric: str, only: tuple = ()) -> pd.DataFrame:
    """Per other primary value (those in ``only`` where given) and level: mean (value - baseline) over the
    pairs found, and the pairs."""
    keys = [k for k in PAIR_KEYS if k in data]
    rows = data.dropna(subset=[metric]).assign(_v=lambda f: f[axis].map(text))
    base = rows[rows["_v"] == text(baseline)].drop_duplicates(keys).set_index(keys)[metric]
    out = []
    others = rows[rows["_v"] != text(baseline)]
    for value, part in (others[others["_v"].isin(only)] if only else others).groupby("_v", sort=False):
        diff = (part.drop_duplicates(keys).set_index(keys)[metric] - base).dropna()
        sp = part.groupby("level")["sparsity"].mean()
        for level, d in diff.groupby(level="level"):
            if level >= 1:
                out.append({"value": value, "raw": part[axis].iloc[0], "level": int(level),
                            "sparsity": float(sp.get(level, np.nan)), "gap": float(d.mean()), "pairs": len(d)})
    return pd.DataFrame(out)


def verdict(claim: Claim, gain: float) -> bool:
    """Whether a gap (signed so that positive = better than the baseline) agrees with the paper's claim."""
    return {"better": gain > claim.tolerance, "worse": gain < -claim.tolerance,
            "not better": gain <= claim.tolerance}[claim.expect]


def _paper_numbers(claim: Claim, table: pd.DataFrame, value: str) -> str:
    """'at 20%: paper -0.10, here +0.05' for every paper sparsity a level of this sweep matches."""
    found, missed = [], []
    for target, per in claim.paper_gap.items():
        if value not in per:
            continue
        mine = table[(table["value"] == value) & ((table["sparsity"] - target).abs() <= MATCH)]
        if len(mine):
            found.append(f"at {100 * target:.0f}%: paper {per[value]:+.2f}, here {mine['gap'].iloc[0]:+.2f}")
        else:
            missed.append(f"{100 * target:.0f}%")
    if missed:
        found.append(f"no level here near the paper's {', '.join(missed)}")
    return f" ({'; '.join(found)})" if found else ""


def _span(part: pd.DataFrame) -> str:
    """Which levels a mean covers: 'levels 1-7 (20-79% sparsity, 14 pairs)' or 'level 1 (20% sparsity, 1 pair)'."""
    lo, hi, n = int(part["level"].min()), int(part["level"].max()), int(part["pairs"].sum())
    pairs = f"{n} pair{'s' if n != 1 else ''}"
    if lo == hi:
        return f"at level {lo} ({100 * part['sparsity'].iloc[0]:.0f}% sparsity, {pairs})"
    return (f"on average over levels {lo}-{hi} ({100 * part['sparsity'].min():.0f}-"
            f"{100 * part['sparsity'].max():.0f}% sparsity, {pairs})")


def _value_sentence(claim: Claim, table: pd.DataFrame, label: str, value: str, metric: str) -> tuple[str, bool]:
    part = table[table["value"] == value].sort_values("level")
    lower = metric.startswith(LOWER_IS_BETTER)
    mean, last = float(part["gap"].mean()), part.iloc[-1]
    fmt = (lambda g: f"{g:+.4f}") if lower else (lambda g: f"{g:+.2f} dB")
    at_last = f", {fmt(last['gap'])} at {100 * last['sparsity']:.0f}%" if len(part) > 1 else ""
    return (f"{label} {fmt(mean)} {_span(part)}{at_last}" + _paper_numbers(claim, table, value),
            verdict(claim, -mean if lower else mean))


def paragraph(claim: Claim, table: pd.DataFrame, recipe: Recipe, axis: str, metric: str, arm: dict) -> str:
    """The reading: the paper's claim, the measured gaps, and whether the claim holds here."""
    base = line_label(recipe, axis, claim.baseline)
    where = ", ".join(f"{a}={v}" for a, v in arm.items())
    head = f"**Reading.** The paper: {claim.text} Here ({metric}, paired by seed and level"
    head += f"; main arm {where})" if where else ")"
    if table.empty:
        return head + f": no level has both {base} and another {axis} yet."
    parts = [_value_sentence(claim, table, line_label(recipe, axis, r), v, metric)
             for v, r in sorted(dict(zip(table["value"], table["raw"])).items())]
    held = sum(ok for _, ok in parts)
    outcome = ("holds" if held == len(parts) else "does not hold" if held == 0 else "holds in part")
    return (f"{head}, against {base}: " + "; ".join(s for s, _ in parts)
            + f". The paper's claim (the others {claim.expect} than {base}, by more than {claim.tolerance:g}) "
            f"{outcome} here: {held} of {len(parts)}.")


def generic(x: Inputs, axis: str | None) -> str:
    """Without a claim: what the figure compares, and each line's value at the sparsest level all reached."""
    data = x.rows.dropna(subset=["level", x.metric]) if x.metric in x.rows else x.rows.iloc[:0]
    if axis is None or data.empty:
        return f"**Reading.** {x.name}: no claim of the paper is registered for this report; see the figures."
    level = int(data.groupby(axis)["level"].max().min())
    at = data[data["level"] == level].groupby(axis)[[x.metric, "sparsity"]].mean()
    shown = "; ".join(f"{line_label(x.recipe, axis, v)} {r[x.metric]:.2f}" for v, r in at.iterrows())
    return (f"**Reading.** {x.name} compares {axis}; no claim of the paper is registered for it. At level {level} "
            f"(~{100 * at['sparsity'].mean():.0f}% sparsity), mean {x.metric} over every run: {shown}.")


def write_reading(x: Inputs) -> None:
    """The report's leading paragraph (``Report.reading``), and reading.md with every level's gap."""
    if x.rep.reading:  # a part that reads its own result (early_stop) has written it
        return
    axis = x.recipe.primary_axis(x.rows)
    claim = x.recipe.claim
    if claim is None or axis is None or x.metric not in x.rows:
        x.rep.reading = generic(x, axis)
        return
    arm = main_arm(x.recipe, x.rows.dropna(subset=["level"]), axis)
    table = gaps(in_arm(x.rows.dropna(subset=["level"]), arm), axis, claim.baseline, x.metric,
                 tuple(map(text, claim.others)))
    x.rep.reading = paragraph(claim, table, x.recipe, axis, x.metric, arm)
    if not table.empty:
        path = x.rep.out / "reading.md"
        shown = table.assign(value=table["raw"].map(lambda v: line_label(x.recipe, axis, v))).drop(columns="raw")
        path.write_text(markdown(shown.round(4), index=False))
        x.rep.add("Reading: every level", f"The gaps behind the reading: {x.metric} of each {axis} minus "
                  f"{line_label(x.recipe, axis, claim.baseline)} per level, mean over the seed pairs.", [path],
                  (path,))
