"""One line per value of an experiment's primary axis (the paper's legend), every other axis that varies in
the sweep as panels: the layout the report's curve figures draw, with the runs each line stands for (the
captions say which) and one colour per primary value kept across panels. Series whose runs hold the same
values (rewind 0 under either budget: without rewinding the budget is moot) are one series."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, fields

import numpy as np
import pandas as pd

from lipsweep.kinds.base import TrialConfig

from .inputs import Recipe
from .stats import curve_stats

MAX_LINES = 8  # lines in one panel; more are split over several panels (the baseline in each), never dropped
PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#7f7f7f",
           "#bcbd22")  # colour-blind-distinguishable first four (blue, red, green, orange)
DASHES = ("-", "--", "-.", ":")
LABEL_COLUMNS = ("source", "mask", "model_width", "images", "series")  # derived columns that already hold a label
PAIR_KEYS = ("image", "task", "seed", "level")  # what makes two runs' values comparable point by point


@dataclass(frozen=True, eq=False)  # lines compare by identity: a shared line is one object
class Line:
    """One drawn series: its legend label, primary value, per-level stats over seeds, the run names behind it,
    and the arms (``axis=value``) whose runs hold exactly its values and are drawn as this line."""

    label: str
    value: object
    stats: pd.DataFrame
    runs: tuple[str, ...]
    same_as: tuple[str, ...] = ()


@dataclass(frozen=True)
class Layout:
    """Panels (title -> lines), the primary axis, the axes that make the panels, and label -> (colour, dash)."""

    axis: str | None
    panel_axes: tuple[str, ...]
    panels: dict[str, list[Line]]
    styles: dict[str, tuple[str, str]] = field(default_factory=dict)

    @property
    def series(self) -> list[Line]:
        """Every distinct line once (a shared one appears in several panels)."""
        return list({id(line): line for lines in self.panels.values() for line in lines}.values())


def text(value: object) -> str:
    """A param value as the text legends and recipes' ``names`` key it by (0.05, not np.float64(0.05))."""
    if isinstance(value, np.generic):
        value = value.item()
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return "-"
    return str(value)


def line_label(recipe: Recipe, axis: str, value: object) -> str:
    """The legend's name of a primary value: the recipe's, else ``axis=value`` (the value for label columns)."""
    name = recipe.names.get(text(value))
    return name if name else text(value) if axis in LABEL_COLUMNS else f"{axis}={text(value)}"


def varying(frame: pd.DataFrame, axes: Sequence[str]) -> list[str]:
    """The axes (present in ``frame``) that take more than one value in it."""
    return [a for a in dict.fromkeys(axes) if a in frame and frame[a].map(text).nunique() > 1]


def _order(values: Sequence[object]) -> list[object]:
    """Numbers numerically, anything else by its text."""
    return sorted(values, key=lambda v: (0, float(v), "") if isinstance(v, (int, float, np.number))
                  and not isinstance(v, bool) else (1, 0.0, text(v)))


def _signature(rows: pd.DataFrame, metric: str) -> tuple:
    keys = [k for k in PAIR_KEYS if k in rows]
    values = rows[[*keys, metric]].dropna(subset=[metric]).astype({metric: float}).round({metric: 6})
    return tuple(sorted(map(tuple, values.map(text).to_numpy())))


def _arms(data: pd.DataFrame, axis: str, panel_axes: list[str], metric: str) -> list[dict]:
    """Each (panel key, primary value) arm with its rows; arms of one primary value whose rows hold the same
    values merge into the first (its ``keys`` list every panel key it stands for)."""
    arms: list[dict] = []
    for key, rows in data.groupby([*panel_axes, axis], sort=False, dropna=False):
        key = key if isinstance(key, tuple) else (key,)
        sig = _signature(rows, metric)
        twin = next((a for a in arms if a["value"] == text(key[-1]) and sig and a["sig"] == sig), None)
        labels = set(rows["label"].map(text)) if "label" in rows else set()
        if twin is None:
            arms.append({"value": text(key[-1]), "raw": rows[axis].iloc[0], "keys": [key[:-1]], "rows": rows,
                         "sig": sig, "runs": labels})
        else:
            twin["keys"].append(key[:-1])
            twin["runs"] |= labels
    return arms


def _line(recipe: Recipe, axis: str, panel_axes: list[str], arm: dict, metric: str) -> Line:
    values = [(a, sorted({text(k[i]) for k in arm["keys"]})) for i, a in enumerate(panel_axes)]
    fixed = ", ".join(f"{a}={vs[0]}" for a, vs in values if len(vs) == 1)
    same = tuple(f"{a}={' = '.join(vs)}" + (f" at {fixed}" if fixed else "") for a, vs in values if len(vs) > 1)
    return Line(line_label(recipe, axis, arm["raw"]), arm["raw"], curve_stats(arm["rows"], [], metric),
                tuple(sorted(arm["runs"])), same)


def main_arm(recipe: Recipe, frame: pd.DataFrame, axis: str | None, with_primary: bool = False) -> dict[str, str]:
    """The main arm's value (as text) of every series axis but the primary (``with_primary``: and the primary)
    that varies: the recipe's ``main``, else the trial default (observation target, full budget, own rewind,
    input convs pruned, rewind 0, method imp); an axis with neither is left out."""
    defaults = {f.name: f for f in fields(TrialConfig)}
    out = {}
    for a in varying(frame, recipe.series):
        if a not in recipe.main and a not in defaults:
            continue
        if a != axis or with_primary:
            value = recipe.main.get(a, defaults[a].default if a in defaults else None)
            out[a] = text(value)
    return out


def in_arm(frame: pd.DataFrame, arm: dict[str, str]) -> pd.DataFrame:
    """The rows of the main arm (a column absent from older runs reads as the arm's value)."""
    keep = pd.Series(True, index=frame.index)
    for a, v in arm.items():
        keep &= frame[a].map(text).replace("-", v) == v
    return frame[keep]


def _title(panel_axes: list[str], key: tuple, constant: str) -> str:
    return ", ".join(f"{a}={text(v)}" for a, v in zip(panel_axes, key)) or constant or "all"


def _split(title: str, lines: list[Line], baseline: str | None) -> dict[str, list[Line]]:
    """A panel of at most ``MAX_LINES`` lines; more go to further panels, each with the baseline line."""
    if len(lines) <= MAX_LINES:
        return {title: lines}
    base = [ln for ln in lines if ln.label == baseline][:1]
    rest = [ln for ln in lines if ln not in base]
    size = MAX_LINES - len(base)
    chunks = [rest[i:i + size] for i in range(0, len(rest), size)]
    return {f"{title} ({i + 1}/{len(chunks)})": base + chunk for i, chunk in enumerate(chunks)}


def layout(frame: pd.DataFrame, recipe: Recipe, metric: str) -> Layout:
    """The figure of ``metric`` vs sparsity: a line per primary value, a panel per combination of the other
    series and facet axes that vary (one panel where none varies), the main arm's panel first."""
    data = frame.dropna(subset=["level"])
    axis = recipe.primary_axis(data)
    if axis is None:
        data, axis = data.assign(all="all"), "all"
    panel_axes = [a for a in varying(data, (*recipe.facet, *recipe.series)) if a != axis]
    constant = ", ".join(text(data[a].iloc[0]) for a in recipe.facet if a in data and a not in panel_axes)
    data = data.assign(**{a: data[a].map(text) for a in panel_axes})
    arms = _arms(data, axis, panel_axes, metric)
    lines = [(arm, _line(recipe, axis, panel_axes, arm, metric)) for arm in arms]
    order = [text(v) for v in _order(list(dict.fromkeys(arm["raw"] for arm in arms)))]
    main = main_arm(recipe, data, axis)
    keys = sorted({k for arm in arms for k in arm["keys"]},  # the main arm's panel first
                  key=lambda k: (-sum(main.get(a) == v for a, v in zip(panel_axes, k)), tuple(map(str, k))))
    baseline = line_label(recipe, axis, recipe.claim.baseline) if recipe.claim else None
    panels: dict[str, list[Line]] = {}
    for key in keys:
        shown = sorted([ln for arm, ln in lines if key in arm["keys"]], key=lambda ln: order.index(text(ln.value)))
        panels.update(_split(_title(panel_axes, key, constant), shown, baseline))
    labels = list(dict.fromkeys(ln.label for _, ln in sorted(lines, key=lambda p: order.index(text(p[1].value)))))
    styles = {lb: (PALETTE[i % len(PALETTE)], DASHES[i // len(PALETTE) % len(DASHES)]) for i, lb in enumerate(labels)}
    return Layout(axis, tuple(panel_axes), panels, styles)


def stats_table(lay: Layout) -> pd.DataFrame:
    """Every distinct line once: its panels, label, runs and per-level stats (the figure's CSV)."""
    parts = []
    for line in lay.series:
        where = [title for title, lines in lay.panels.items() if any(ln is line for ln in lines)]
        parts.append(line.stats.assign(panels=" | ".join(where), line=line.label, runs=" ".join(line.runs),
                                       same_as="; ".join(line.same_as)))
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()


def run_names(frame: pd.DataFrame) -> str:
    """'3 runs: a, b, c': the MLflow run names (trial labels) behind a figure."""
    names = sorted(set(frame["label"].map(text))) if "label" in frame else sorted(set(frame["run_id"].map(text)))
    return f"{len(names)} run{'s' if len(names) != 1 else ''}: {', '.join(names)}"


def caption(lay: Layout) -> str:
    """Which runs each panel's lines draw (run names, seeds n), and which series were merged as identical."""
    parts = []
    baseline = next(iter(lay.styles), None)  # the first primary value (IMP (rewind 0), LIP (IMP), ...)
    for title, lines in lay.panels.items():
        shown = "; ".join(f"{ln.label}: {len(ln.runs)} run(s) ({', '.join(ln.runs)}), n={int(ln.stats['n'].max())}"
                          if len(ln.stats) else f"{ln.label}: no values" for ln in lines)
        if baseline is not None and all(ln.label != baseline for ln in lines):  # said, not left to be noticed
            shown += f"; no {baseline} run in this arm"
        parts.append(f"*{title}*: {shown}.")
    merged = [f"{ln.label} ({', '.join(ln.same_as)})" for ln in lay.series if ln.same_as]
    if merged:
        parts.append("One series each, drawn in every panel it belongs to (their runs hold identical values): "
                     + "; ".join(merged) + ".")
    return " ".join(parts)
