"""Matplotlib figures (Agg, PNG). Each function draws one figure from prepared tables and writes it."""

from __future__ import annotations

import textwrap
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from .stats import layer_label  # noqa: E402

ORACLE_NOTE = {"psnr_peak": " (oracle: best iteration chosen with the clean image)"}


def _save(fig, path: Path, dpi: int = 110, legend: tuple[list, list[str]] | None = None) -> Path:
    """Every figure's last step: lay out, add the shared ``legend`` (handles, labels) below the panels (the
    PNG then grows to hold it), write the PNG, free the figure."""
    fig.tight_layout()
    if legend is not None:
        _legend_below(fig, *legend)
    fig.savefig(path, dpi=dpi, bbox_inches="tight" if legend is not None else None)
    plt.close(fig)
    return path


def _panel_grid(n: int, max_cols: int, inches: tuple[float, float]):
    """A grid of at least ``n`` panels, at most ``max_cols`` wide, the unused ones hidden."""
    cols = min(max(n, 1), max_cols)
    rows = -(-max(n, 1) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(inches[0] * cols, inches[1] * rows), squeeze=False)
    for ax in axes.flat[n:]:
        ax.axis("off")
    return fig, axes


def _style(ax, facet: str, ylabel: str, legend: bool = True) -> None:
    """A line panel's common finish: its y label, facet title, grid and (unless one is shared) legend."""
    ax.set_ylabel(ylabel)
    ax.set_title(facet, fontsize=9)
    ax.grid(alpha=0.3)
    if legend:
        ax.legend(fontsize=7)


def curves(panels: dict[str, dict[str, pd.DataFrame]], metric: str, path: Path, title: str,
           references: dict[str, dict[str, float]] | None = None, x: str = "sparsity") -> Path:
    """One panel per facet; a line per series with a +-1 std band over seeds, one colour per series in every
    panel; dashed dense reference; points for reference models (e.g. the deep decoder); one legend below the
    panels, outside the data (issue 28). ``x`` is sparsity or kept (log scale)."""
    fig, axes = _panel_grid(len(panels), 3, (5.2, 4))
    names = list(dict.fromkeys(name for series in panels.values() for name in series))
    colours = {name: f"C{i % 10}" for i, name in enumerate(names)}
    handles: dict[str, object] = {}
    for ax, (facet, series) in zip(axes.flat, panels.items()):
        dense = None
        for name, table in series.items():
            t = table.sort_values("level")
            xs = t[x] * (100 if x == "sparsity" else 1)
            handles.setdefault(name, ax.plot(xs, t["mean"], marker="o", ms=3, color=colours[name])[0])
            ax.fill_between(xs, t["mean"] - t["std"], t["mean"] + t["std"], color=colours[name], alpha=0.2)
            if dense is None and (t["level"] == 0).any():
                dense = float(t.loc[t["level"] == 0, "mean"].iloc[0])
        if dense is not None:
            handles.setdefault("dense", ax.axhline(dense, ls="--", c="gray", lw=1))
        for name, point in (references or {}).get(facet, {}).items():
            handles.setdefault(name, ax.scatter([point["x"]], [point["y"]], marker="*", s=120, zorder=5, c="k"))
        if x == "kept":
            ax.set_xscale("log")
            ax.invert_xaxis()
        ax.set_xlabel("sparsity (%)" if x == "sparsity" else "remaining conv weights (log)")
        _style(ax, facet, axis_label(metric), legend=False)
    fig.suptitle(f"{title}\n{metric}{ORACLE_NOTE.get(metric, '')}, mean ± 1 std over seeds", fontsize=10)
    return _save(fig, path, legend=(list(handles.values()), list(handles)))


def heatmap(matrix: pd.DataFrame, path: Path, title: str, fmt: str = "{:.2f}", center: bool = False) -> Path:
    """A matrix with its numbers written in the cells; missing cells are hatched and marked 'missing'."""
    fig, ax = plt.subplots(figsize=(1.6 + 1.3 * max(1, matrix.shape[1]), 1.2 + 0.6 * max(1, matrix.shape[0])))
    values = matrix.to_numpy(dtype=float)
    finite = values[np.isfinite(values)]
    vmax = np.abs(finite).max() if center and finite.size else None
    im = ax.imshow(np.ma.masked_invalid(values), cmap="RdBu" if center else "viridis", aspect="auto",
                   vmin=-vmax if vmax else None, vmax=vmax)
    ax.set_facecolor("#dddddd")
    for i in range(values.shape[0]):
        for j in range(values.shape[1]):
            text = "missing" if not np.isfinite(values[i, j]) else fmt.format(values[i, j])
            ax.text(j, i, text, ha="center", va="center", fontsize=8)
    ax.set_xticks(range(matrix.shape[1]), matrix.columns, rotation=30, ha="right", fontsize=8)
    ax.set_yticks(range(matrix.shape[0]), matrix.index, fontsize=8)
    ax.set_xlabel("evaluated on")
    ax.set_ylabel("mask found on")
    ax.set_title(title, fontsize=9)
    fig.colorbar(im, ax=ax)
    return _save(fig, path)


def _layer_panels(table: pd.DataFrame, path: Path, title: str, column: str, ylabel: str, label, null: bool) -> Path:
    """One panel per matched sparsity, layers in forward order on x, one line per series (mean over its runs)
    of ``column``; ``null``: the dashed untrained-theta_0 magnitude null where the table has it."""
    targets = sorted(table["target_sparsity"].unique())
    fig, axes = plt.subplots(1, len(targets), figsize=(4.5 * len(targets), 4.5), squeeze=False, sharey=True)
    for ax, target in zip(axes[0], targets):
        part = table[table["target_sparsity"] == target]
        layers = list(dict.fromkeys(part["layer"]))
        for method, rows in part.groupby("method"):
            d = rows.groupby("layer")[column].mean().reindex(layers)
            ax.plot(range(len(layers)), d.to_numpy(), marker=".", label=label(method, rows))
        if null and "null" in part and part["null"].notna().any():
            line = part.groupby("layer")["null"].mean().reindex(layers)
            ax.plot(range(len(layers)), line.to_numpy(), ls="--", c="gray", label="theta_0 magnitude null")
        ax.set_xticks(range(len(layers)), [layer_label(n) for n in layers], rotation=90, fontsize=6)
        _style(ax, f"~{100 * part['sparsity'].mean():.0f}% sparse", ylabel)
    fig.suptitle(title, fontsize=10)
    return _save(fig, path)


def layerwise(table: pd.DataFrame, path: Path, title: str) -> Path:
    """Per-layer density (rows: layers in forward order) for each series (mean over its runs), one panel per
    matched sparsity; dashed, where the table has it, the untrained-theta_0 magnitude null (Fig. 7)."""
    return _layer_panels(table, path, title, "density", "layer density",
                         lambda method, rows: f"{method} ({100 * rows['sparsity'].mean():.0f}%)", null=True)


def excess(means: pd.DataFrame, path: Path, title: str) -> Path:
    """Per matched sparsity, one bar per series and layer group: size-weighted density minus the theta_0 null's
    (``curves.group_means`` rows); above 0 the mask keeps that group denser than magnitude at init does."""
    targets = sorted(means["target_sparsity"].unique())
    fig, axes = plt.subplots(1, len(targets), figsize=(4.8 * len(targets), 4.2), squeeze=False, sharey=True)
    methods = sorted(means["method"].unique())
    for ax, target in zip(axes[0], targets):
        part = means[(means["target_sparsity"] == target) & (means["group"] != "all")]
        groups = [g for g in part["group"].cat.categories if g in set(part["group"])]
        width = 0.8 / max(len(methods), 1)
        for i, method in enumerate(methods):
            v = part[part["method"] == method].set_index("group")["excess_null"].reindex(groups)
            ax.bar(np.arange(len(groups)) + i * width, v.to_numpy(dtype=float), width, label=method)
        ax.axhline(0, c="k", lw=0.8)
        ax.set_xticks(np.arange(len(groups)) + 0.4 - width / 2, groups, rotation=45, ha="right", fontsize=7)
        _style(ax, f"~{100 * part['sparsity'].mean():.0f}% sparse", "density - theta_0 null")
    fig.suptitle(title, fontsize=10)
    return _save(fig, path)


def cumulative(curve: pd.DataFrame, path: Path, title: str) -> Path:
    """The reference code's Fig. 7 curve: running size-weighted sparsity over the layers in forward order, one
    line per series (mean over runs), one panel per matched sparsity."""
    return _layer_panels(curve, path, title, "cumulative_sparsity", "cumulative sparsity so far",
                         lambda method, rows: str(method), null=False)

def spectrum(image: np.ndarray) -> np.ndarray:
    """Centred log-magnitude spectrum of the luminance."""
    gray = image @ np.array([0.299, 0.587, 0.114])
    return np.log1p(np.abs(np.fft.fftshift(np.fft.fft2(gray))))


def fft(images: dict[str, np.ndarray], path: Path, title: str,
        pairs: list[tuple[str, str]] | None = None) -> Path:
    """Reconstructions, their spectra, and the difference of spectra per pair ``(a, b)`` as a - b (Fig. 19's
    'LIP - random'); by default each spectrum minus the first one's (Figs. 18-19)."""
    names = list(images)
    spectra = {n: spectrum(images[n]) for n in names}
    pairs = pairs if pairs is not None else [(n, names[0]) for n in names[1:]]
    cols = max(len(names), len(pairs), 1)
    fig, axes = plt.subplots(3, cols, figsize=(3.2 * cols, 9.2), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for j, n in enumerate(names):
        axes[0, j].imshow(np.clip(images[n], 0, 1))
        axes[0, j].set_title(n, fontsize=8)
        axes[1, j].imshow(spectra[n], cmap="magma")
    for j, (a, b) in enumerate(pairs):
        diff = spectra[a] - spectra[b]
        lim = max(np.abs(diff).max(), 1e-9)
        axes[2, j].imshow(diff, cmap="RdBu", vmin=-lim, vmax=lim)
        axes[2, j].set_title(f"{a} - {b}", fontsize=8)
    fig.suptitle(title, fontsize=10)
    return _save(fig, path, dpi=100)


def grid(rows: dict[str, dict[str, np.ndarray]], path: Path, title: str) -> Path:
    """Images in rows (e.g. one per task) and named columns (truth, observation, dense, LIP, random: Fig. 8);
    a cell a row lacks stays blank."""
    columns = list(dict.fromkeys(c for row in rows.values() for c in row))
    fig, axes = plt.subplots(len(rows), len(columns), figsize=(2.2 * len(columns), 2.4 * len(rows)), squeeze=False)
    for i, (name, row) in enumerate(rows.items()):
        for j, col in enumerate(columns):
            ax = axes[i, j]
            ax.axis("off")
            if col in row:
                ax.imshow(np.clip(row[col], 0, 1))
                ax.set_title(f"{name}: {col}" if j == 0 else col, fontsize=7)
    fig.suptitle(title, fontsize=9)
    return _save(fig, path, dpi=120)


CELL_INCHES, CELLS_DPI = (2.2, 2.4), 100  # one image cell of ``cells``: a PNG of cols x rows cells exactly


def cells(rows: dict[str, list[tuple[str, np.ndarray]]], path: Path, title: str) -> Path:
    """Images in rows of captioned cells, left to right (Fig. 2: a chain's sparsities; Fig. 12: iterations);
    rows may differ in length. The PNG is (2.2 x columns, 2.4 x rows) inches at 100 dpi."""
    n_cols = max((len(r) for r in rows.values()), default=1) or 1
    fig, axes = plt.subplots(len(rows), n_cols, figsize=(CELL_INCHES[0] * n_cols, CELL_INCHES[1] * len(rows)),
                             squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for i, (name, row) in enumerate(rows.items()):
        for j, (caption, img) in enumerate(row):
            axes[i, j].imshow(np.clip(img, 0, 1))
            axes[i, j].set_title(f"{name}\n{caption}" if j == 0 else caption, fontsize=7)
    fig.suptitle(title, fontsize=9)
    return _save(fig, path, dpi=CELLS_DPI)


def iterations(panels: dict[str, dict[str, pd.DataFrame]], ylabel: str, path: Path, title: str,
               logx: bool = True, logy: bool = False) -> Path:
    """Learning curves (Figs. 10-11): one panel per facet, a line per series over ``iter`` with a +-1 std
    band over seeds (columns iter, mean, std, n)."""
    fig, axes = _panel_grid(len(panels), 4, (4.6, 3.8))
    for ax, (facet, series) in zip(axes.flat, panels.items()):
        for name, table in series.items():
            t = table[table["iter"] > 0] if logx else table
            t = t.sort_values("iter")
            ax.plot(t["iter"], t["mean"], lw=1.2, label=f"{name} (n={int(t['n'].max()) if len(t) else 0})")
            ax.fill_between(t["iter"], t["mean"] - t["std"], t["mean"] + t["std"], alpha=0.2)
        if logx:
            ax.set_xscale("log")
            ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        if logy:
            ax.set_yscale("log")
        ax.set_xlabel("iteration" + (" (log)" if logx else ""))
        _style(ax, facet, ylabel)
    fig.suptitle(f"{title}\nmean ± 1 std over seeds", fontsize=10)
    return _save(fig, path)



OUTPUTS = {"ema_peak": "best EMA output (oracle)", "peak": "best output (oracle)", "ema": "EMA output",
           "final": "final output", "posterior": "posterior mean", "oracle": "oracle restart",
           "observation": "observation"}
QUANTITIES = {"ypsnr": "Y-PSNR", "psnr": "PSNR", "ssim": "SSIM", "mse": "MSE per pixel", "accuracy": "accuracy"}
UNITS = {"ypsnr": " (dB)", "psnr": " (dB)"}


def axis_label(metric: str) -> str:
    """A metric as an axis label with its unit: psnr_ema -> "PSNR of the EMA output (dB)"; clean-fit metrics
    (the reference's rewind number, issue 27) say so; unknown metrics stay as they are."""
    if metric == "imp_loss":
        return "IMP loss (MSE to the IMP target)"
    name = metric.removeprefix("clean_fit_")
    quantity, _, output = name.partition("_")
    if quantity not in QUANTITIES:
        return metric
    what = f" of the {OUTPUTS.get(output, output)}" if output else ""
    fit = ", IMP fit to the clean image" if metric.startswith("clean_fit_") else ""
    return f"{QUANTITIES[quantity]}{what}{fit}{UNITS.get(quantity, '')}"


def _draw_line(ax, line, style: tuple[str, str]) -> float | None:
    """One series with its +-1 std band; returns its dense (level 0) mean, if it has one."""
    t = line.stats.sort_values("level")
    xs = 100 * t["sparsity"]
    ax.plot(xs, t["mean"], color=style[0], ls=style[1], marker="o", ms=3, lw=1.4)
    ax.fill_between(xs, t["mean"] - t["std"], t["mean"] + t["std"], color=style[0], alpha=0.15, lw=0)
    dense = t.loc[t["level"] == 0, "mean"]
    return float(dense.iloc[0]) if len(dense) else None


def _legend_below(fig, handles: list, labels: list[str]) -> None:
    """The shared legend under the panels, outside every data area."""
    fig.legend(handles, labels, loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=min(len(labels), 6),
               fontsize=9, frameon=False)


def primary_curves(lay, ylabel: str, path: Path, title: str, max_cols: int = 3) -> Path:
    """``lines.Layout`` as paper-size panels (3.4 x 2.7 in each, 9-10 pt): a line per primary value in its fixed
    colour, a +-1 std band over seeds, the dense level dashed grey, one legend below the panels."""
    fig, axes = _panel_grid(len(lay.panels), max_cols, (3.4, 2.7))
    for ax, (panel, shown) in zip(axes.flat, lay.panels.items()):
        dense = [d for line in shown if (d := _draw_line(ax, line, lay.styles[line.label])) is not None]
        if dense:
            ax.axhline(float(np.mean(dense)), ls="--", c="gray", lw=0.8)
        ax.set_title(textwrap.fill(panel, 44), fontsize=8.5)
        ax.set_xlabel("sparsity (%)", fontsize=9)
        ax.set_ylabel(ylabel, fontsize=9)
        ax.tick_params(labelsize=8)
        ax.grid(alpha=0.3)
    handles = [plt.Line2D([], [], color=c, ls=d, marker="o", ms=3) for c, d in lay.styles.values()]
    handles.append(plt.Line2D([], [], color="gray", ls="--", lw=0.8))
    fig.suptitle(title, fontsize=10)
    return _save(fig, path, dpi=200, legend=(handles, [*lay.styles, "dense network (level 0)"]))
