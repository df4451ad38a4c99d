"""Image figures: a chain's restorations up to its sparsest matching ticket (Fig. 2), the spectra of each
method's restoration (Figs. 18-19), snapshots of the fit over iterations (Fig. 12) and the SGLD posterior
(Fig. 16). Every writer takes the report's ``Inputs`` and shows a one-sentence section where data is missing."""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from lipsweep.core.paths import IMAGES, artifact, artifact_dir, snapshot, snapshot_iteration

from . import figures
from .inputs import Inputs
from .lines import in_arm, main_arm, run_names
from .stats import given, markdown, nearest_level

if TYPE_CHECKING:
    from .runs import Runs

IMP_COLUMNS = 4  # matching levels a Fig. 2 row shows (evenly picked, the sparsest matching one last)
GRID_ROWS = 8  # (image, task) rows of one Fig. 2 grid; a benchmark sweep shows its first eight
METHOD_NAMES = {"imp": "LIP", "snip": "SNIP", "random": "random"}
FFT_PAIRS = (("LIP", "random"), ("LIP", "SNIP"), ("SNIP", "random"))  # Fig. 19's difference maps
HF_RADIUS = 0.25  # high frequency: outside a centred disc of 1/4 of the Nyquist band (Figs. 18-19's claim)
LUMA = np.array([0.299, 0.587, 0.114])
# the peak-EMA output (psnr_ema_peak's image, the paper's reconstruction; logged where the store writes it), else
# the final restoration (the final EMA output, or the final output for tasks without an EMA)
FFT_IMAGES = (IMAGES.get("ema_peak", "ema_peak.png"), IMAGES["restored"])
FFT_SHARES = ("hf_ratio", "relative", "hf_error_share", "hf_error_vs_truth")
FFT_NOTE = ("ema_peak.png: the EMA output at its best PSNR, the paper's reconstruction; restored.png: the final "
            "EMA output, used where no peak-EMA image was logged")


def image_at(runs: Runs, run_id: str, level: int, name: str) -> np.ndarray | None:
    """A level's image by its ``paths.IMAGES`` key or file name; None where the sweep did not log it."""
    return runs.artifact_image(run_id, artifact(level, IMAGES.get(name, name)))


def imp_levels(rows: pd.DataFrame) -> pd.DataFrame:
    """The logged levels of IMP chains (method imp, where the sweep has a method axis)."""
    data = rows.dropna(subset=["level"])
    return data[data["method"] == "imp"] if "method" in data else data


def first_run(data: pd.DataFrame) -> pd.DataFrame:
    """One trial's rows: the lowest seed, then the first by label (a figure shows one seed)."""
    keys = [k for k in ("seed", "label", "run_id") if k in data]
    run_id = data.sort_values(keys)["run_id"].iloc[0]
    return data[data["run_id"] == run_id].sort_values("level")


def matching_level(chain: pd.DataFrame, metric: str, delta: float) -> int:
    """The sparsest level of one chain whose ``metric`` is within ``delta`` of its dense level: the sparsest
    matching subnetwork (Appendix A, Eq. 1, with a tolerance); 0 where no pruned level matches."""
    dense = chain.loc[chain["level"] == 0, metric].dropna() if metric in chain else pd.Series(dtype=float)
    if dense.empty:
        return 0
    ok = chain[(chain["level"] > 0) & (chain[metric] >= float(dense.iloc[0]) - delta)]
    return int(ok.sort_values(["sparsity", "level"])["level"].iloc[-1]) if not ok.empty else 0


def evenly(levels: list[int], k: int) -> list[int]:
    """At most ``k`` of ``levels``, evenly spaced, always the first and the last."""
    if not levels:
        return []
    return [levels[int(i)] for i in np.unique(np.linspace(0, len(levels) - 1, min(k, len(levels))).round())]


def grid_levels(chain: pd.DataFrame, matching: int) -> list[int]:
    """Fig. 2's columns: pruned levels up to the sparsest matching one, then the sparsest level if beyond."""
    levels = sorted(int(v) for v in chain["level"] if 0 < v <= matching)
    last = int(chain["level"].max())
    return evenly(levels, IMP_COLUMNS) + ([last] if last > matching else [])


def cell_caption(role: str, name: str, at: pd.Series, value: float, metric: str) -> str:
    """A cell's caption: a restoration's sparsity and metric; the observation's own PSNR vs the truth."""
    unit = " dB" if "psnr" in metric else ""
    if name == "observation":
        own = given(at, "psnr_observation")
        return f"observation {own:.2f} dB" if own is not None else "observation"
    return role if name != "restored" else f"{role} {100 * at['sparsity']:.1f}% {value:.2f}{unit}"


def main_chains(x: Inputs) -> tuple[pd.DataFrame, dict[str, str]]:
    """The IMP levels of the recipe's main arm (``reading.main_arm``, the primary axis at its main value too);
    every IMP level where no run is in that arm."""
    data = imp_levels(x.rows)
    axis = x.recipe.primary_axis(data)
    arm = main_arm(x.recipe, data, axis, with_primary=True)
    picked = in_arm(data, arm)
    return (picked, arm) if not picked.empty else (data, {})


def _grid_row(x: Inputs, chain: pd.DataFrame) -> tuple[list[tuple[str, np.ndarray]], list[dict]]:
    """One (image, task) of Fig. 2: truth, observation, dense, then the chain's levels; and their table rows."""
    run_id, matching = chain["run_id"].iloc[0], matching_level(chain, x.metric, x.delta)
    cells, table = [], []
    wanted = [("truth", 0, "clean"), ("observation", 0, "observation"), ("dense", 0, "restored")]
    wanted += [("matching" if lv == matching else "LIP" if lv < matching else "sparsest", lv, "restored")
               for lv in grid_levels(chain, matching)]
    for role, level, name in wanted:
        img = image_at(x.runs, run_id, level, name)
        if img is None:
            continue
        at = chain[chain["level"] == level].iloc[0]
        value = float(at[x.metric]) if x.metric in at and pd.notna(at[x.metric]) else np.nan
        caption = cell_caption(role, name, at, value, x.metric)
        cells.append((caption, img))
        table.append({"column": role, "level": level, "sparsity": round(float(at["sparsity"]), 4),
                      x.metric: value, "matching_level": matching})
    return cells, table


def write_visual_grid(x: Inputs) -> None:
    """Fig. 2: per (image, task), one seed: the truth, the observation, the dense restoration and the IMP
    restorations at increasing sparsity up to the sparsest matching ticket (within ``delta`` of dense by the
    report metric), then the sparsest level reached (Fig. 2's last column)."""
    data, arm = main_chains(x)
    keys = [k for k in ("image", "task") if k in data]
    rows, table, shown = {}, [], []
    for group, one in data.groupby(keys, dropna=False) if keys and not data.empty else []:
        if len(rows) == GRID_ROWS:
            break
        chain = first_run(one)
        cells, entries = _grid_row(x, chain)
        name, seed = " / ".join(str(g) for g in group), chain["seed"].iloc[0] if "seed" in chain else None
        label = given(chain.iloc[0], "label", chain["run_id"].iloc[0])
        if cells:
            rows[f"{name}, seed {seed}"] = cells
            shown.append(f"run {label} ({name}, seed {seed})")
        table += [{"image_task": name, "seed": seed, "run": label, **e} for e in entries]
    if not rows:
        x.rep.add("Restorations", "no IMP restorations (restored.png) logged yet.", [])
        return
    pd.DataFrame(table).to_csv(x.rep.out / "visual_grid.csv", index=False)
    where = ", ".join(f"{a}={v}" for a, v in arm.items()) or "every IMP chain"
    path = figures.cells(rows, x.rep.out / "visual_grid.png",
                         f"{x.name}, main arm ({where}):\n{'; '.join(shown[:2])}{' ...' if len(shown) > 2 else ''}\n"
                         f"restorations up to the sparsest matching ticket (delta {x.delta} dB, Fig. 2)")
    x.rep.add("Restorations (Fig. 2)", f"The main arm ({where}); per image and task, one seed: {'; '.join(shown)}. "
              "Truth, observation (captioned with its own PSNR vs the truth), dense, and IMP levels up "
              f"to the sparsest matching ticket (its {x.metric} within {x.delta} dB of dense), then the sparsest "
              f"level; captions give sparsity and {x.metric}. visual_grid.csv lists each column's level"
              + (f"; the first {GRID_ROWS} of {data.groupby(keys).ngroups} rows." if len(rows) == GRID_ROWS else "."),
              [path, x.rep.out / "visual_grid.csv"])


def _outside(power: np.ndarray, radius: float) -> np.ndarray:
    """The spectrum's bins beyond ``radius`` x the Nyquist frequency (a centred disc's complement)."""
    fy, fx = np.meshgrid(np.fft.fftfreq(power.shape[0]), np.fft.fftfreq(power.shape[1]), indexing="ij")
    return np.hypot(fy, fx) / 0.5 > radius


def _power(image: np.ndarray) -> np.ndarray:
    return np.abs(np.fft.fft2(image @ LUMA)) ** 2


def high_frequency_ratio(image: np.ndarray, radius: float = HF_RADIUS) -> float:
    """Share of the mean-removed luminance's spectral energy outside a centred disc of ``radius`` x the
    Nyquist frequency: the high-frequency content Figs. 18-19 compare between tickets."""
    power = _power(image - (image @ LUMA).mean())
    total = float(power.sum())
    return float(power[_outside(power, radius)].sum() / total) if total > 0 else float("nan")


def error_high_frequency(image: np.ndarray, truth: np.ndarray, radius: float = HF_RADIUS) -> tuple[float, float]:
    """The error spectrum |F(x_hat) - F(x)|^2 (luminance): its share beyond ``radius`` x Nyquist, and that
    high-frequency error energy relative to the truth's own; both 0 where x_hat == x. A high
    ``high_frequency_ratio`` with a large error here is residual noise, not kept detail (docs/science.md
    section 5, the FFT note)."""
    power, truth_power = _power(image - truth), _power(truth - (truth @ LUMA).mean())
    outside = _outside(power, radius)
    total, high, truth_high = float(power.sum()), float(power[outside].sum()), float(truth_power[outside].sum())
    return (high / total if total > 0 else 0.0), (high / truth_high if truth_high > 0 else float("nan"))


def reconstruction(runs: Runs, run_id: str, level: int) -> tuple[str, np.ndarray] | None:
    """The level's peak-EMA image (what ``psnr_ema_peak``, the paper's metric, scores), else its final
    restoration; with the file it came from. None where neither was logged."""
    for name in FFT_IMAGES:
        if (img := image_at(runs, run_id, level, name)) is not None:
            return name, img
    return None


def _fft_found(runs: Runs, pick: pd.DataFrame, sparsity: float) -> list[dict]:
    """Per method and seed (one run each): the reconstruction at the level nearest ``sparsity`` and its truth."""
    found = []
    for (method, run_id), one in pick.groupby(["method", "run_id"]):
        at = nearest_level(one, sparsity)
        level = int(at["level"].iloc[0]) if not at.empty else 0
        shown = reconstruction(runs, run_id, level) if level > 0 else None
        truth = image_at(runs, run_id, 0, "clean")
        if shown is not None and (truth is None or shown[1].shape == truth.shape):
            clean = " (clean target)" if given(at.iloc[0], "imp_target") == "clean" else ""
            found.append({"method": METHOD_NAMES.get(str(method), str(method)) + clean, "seed": given(at.iloc[0], "seed"),
                          "level": level, "sparsity": float(at["sparsity"].iloc[0]), "file": shown[0],
                          "image": shown[1], "truth": truth})
    return sorted(found, key=lambda f: (str(f["seed"]), f["method"]))


def _fft_figure(x: Inputs, found: list[dict], target: float, stem: str) -> Path:
    """Figs. 18-19 for the lowest seed: truth, each method's reconstruction, spectra and their differences."""
    seed = found[0]["seed"]
    shown = [f for f in found if f["seed"] == seed]
    images = {"truth": shown[0]["truth"]} if shown[0]["truth"] is not None else {}
    images.update({f"{f['method']} {100 * f['sparsity']:.1f}%": f["image"] for f in shown})
    names = {f["method"]: f"{f['method']} {100 * f['sparsity']:.1f}%" for f in shown}
    pairs = [(names[a], names[b]) for a, b in FFT_PAIRS if a in names and b in names]
    rest = list(names.values())
    return figures.fft(images, x.rep.out / f"{stem}.png", f"log-magnitude spectra at ~{100 * target:.0f}% sparsity "
                       f"(seed {seed}, {shown[0]['file']})", pairs or [(m, rest[0]) for m in rest[1:]])


def _shares(found: list[dict], target: float) -> list[dict]:
    """One row per reconstruction (and one per seed's truth): image and error-spectrum high-frequency shares
    (NaN where the sweep logged no truth)."""
    rows, nan = [], float("nan")
    for f in found:
        truth_hf = high_frequency_ratio(f["truth"]) if f["truth"] is not None else nan
        err_share, err_rel = error_high_frequency(f["image"], f["truth"]) if f["truth"] is not None else (nan, nan)
        rows.append({"target_sparsity": target, "method": f["method"], "seed": f["seed"], "level": f["level"],
                     "sparsity": f["sparsity"], "file": f["file"], "hf_ratio": high_frequency_ratio(f["image"]),
                     "hf_ratio_truth": truth_hf, "hf_error_share": err_share, "hf_error_vs_truth": err_rel})
    truths = {str(f["seed"]): f for f in found if f["truth"] is not None}.values()
    rows += [{"target_sparsity": target, "method": "truth", "seed": f["seed"], "level": 0, "sparsity": 0.0,
              "file": "clean.png", "hf_ratio": high_frequency_ratio(f["truth"]),
              "hf_ratio_truth": high_frequency_ratio(f["truth"]), "hf_error_share": 0.0, "hf_error_vs_truth": 0.0}
             for f in truths]
    return rows


def fft_means(per_run: pd.DataFrame) -> pd.DataFrame:
    """Mean and std over seeds per (target, method) of every share; relative = hf_ratio / the truth's."""
    data = per_run.assign(relative=per_run["hf_ratio"] / per_run["hf_ratio_truth"])
    cols = list(FFT_SHARES)
    grouped = data.groupby(["target_sparsity", "method"], sort=False)
    table = grouped.agg(level=("level", "mean"), sparsity=("sparsity", "mean"), seeds=("seed", "nunique"),
                        file=("file", "first"), **{c: (c, "mean") for c in cols},
                        **{f"{c}_std": (c, lambda v: v.std(ddof=1) if len(v) > 1 else 0.0) for c in cols})
    return table.reset_index().round(4)


def _fft_cells(table: pd.DataFrame) -> pd.DataFrame:
    """The markdown view of ``fft_means``: "mean ± std" cells (std only where there are several seeds)."""
    out = table[["target_sparsity", "method", "level", "sparsity", "seeds", "file"]].copy()
    for c in FFT_SHARES:
        out[c] = [f"{m:.4f}" + (f" ± {s:.4f}" if n > 1 else "") for m, s, n in
                  zip(table[c], table[f"{c}_std"], table["seeds"])]
    return out


def write_fft(x: Inputs) -> None:
    """Figs. 18-19: one image; per target sparsity (recipe option ``fft_sparsities``, else the report's) the
    truth and each method's peak-EMA reconstruction (else its final one), their spectra and differences for
    the lowest seed; the high-frequency shares of the images and of the error spectra, mean ± std over seeds."""
    data = x.rows.dropna(subset=["level"])
    if data.empty or "method" not in data:
        x.rep.add("FFT", "no method chains logged yet.", [])
        return
    keys = [k for k in ("image", "task") if k in data]
    pick = data[(data[keys] == first_run(data)[keys].iloc[0]).all(axis=1)] if keys else data
    targets = tuple(x.recipe.options.get("fft_sparsities", (x.sparsity,)))
    files, shares = [], []
    for target in targets:
        found = _fft_found(x.runs, pick, target)
        if len({f["method"] for f in found}) < 2:
            continue
        files.append(_fft_figure(x, found, target, "fft" if len(targets) == 1 else f"fft_{round(100 * target)}"))
        shares += _shares(found, target)
    if not files:
        x.rep.add("FFT", "fewer than two methods' reconstructions at the asked sparsities.", [])
        return
    per_run = pd.DataFrame(shares)
    per_run.round(5).to_csv(x.rep.out / "fft_high_frequency_runs.csv", index=False)
    table = fft_means(per_run)
    table.to_csv(x.rep.out / "fft_high_frequency.csv", index=False)
    (x.rep.out / "fft_high_frequency.md").write_text(markdown(_fft_cells(table), index=False))
    used = ", ".join(sorted(set(per_run.loc[per_run["method"] != "truth", "file"])))
    x.rep.add("FFT comparison (Figs. 18-19)", f"Reconstructions used: {used} ({FFT_NOTE}). Figures: the lowest "
              "seed's truth and reconstructions, centred log-magnitude spectra and the differences between methods' "
              f"spectra (LIP - random, LIP - SNIP, SNIP - random). Table, mean ± std over seeds: hf_ratio = share of "
              f"the image's spectral energy beyond {HF_RADIUS} x Nyquist (mean removed), relative = the same over the "
              "truth's; hf_error_share = that share of the error spectrum |F(x_hat) - F(x)|^2, hf_error_vs_truth = the "
              "high-frequency error energy over the truth's high-frequency energy. Kept detail raises hf_ratio "
              f"without raising hf_error_vs_truth; residual noise raises both. Drawn from {run_names(pick)}.",
              [*files, x.rep.out / "fft_high_frequency.md", x.rep.out / "fft_high_frequency.csv",
               x.rep.out / "fft_high_frequency_runs.csv"])


def snapshot_iters(x: Inputs, chain: pd.DataFrame, level: int) -> list[int]:
    """The iterations a level has snapshots of: the trial's ``snapshots`` param, else its artifact listing."""
    asked = given(chain.iloc[0], "snapshots", ())
    if isinstance(asked, (int, float)):
        asked = (asked,)
    if asked:
        return sorted(int(i) for i in asked)
    try:
        listed = x.runs.client.list_artifacts(chain["run_id"].iloc[0], artifact_dir(level))
    except Exception:  # noqa: BLE001 - a partial sweep may have no such folder
        return []
    return sorted(it for f in listed if (it := snapshot_iteration(f.path)) is not None)


def _snapshot_rows(x: Inputs, chain: pd.DataFrame) -> dict[str, list[tuple[str, np.ndarray]]]:
    """Fig. 12: the dense row and a few LIP levels, each its snapshots left to right, then the truth."""
    run_id, rows = chain["run_id"].iloc[0], {}
    chosen = x.recipe.options.get("snapshot_levels")
    levels = [0, *evenly(sorted(int(v) for v in chain["level"] if v > 0), 3)] if chosen is None else list(chosen)
    truth = image_at(x.runs, run_id, 0, "clean")
    for level in [lv for lv in levels if (chain["level"] == lv).any()]:
        at = chain[chain["level"] == level].iloc[0]
        cells = [(f"iteration {it}", img) for it in snapshot_iters(x, chain, level)
                 if (img := image_at(x.runs, run_id, level, snapshot(it))) is not None]
        if cells:
            name = "dense" if level == 0 else f"LIP {100 * at['sparsity']:.1f}%"
            rows[name] = cells + ([("truth", truth)] if truth is not None else [])
    return rows


def write_snapshots(x: Inputs) -> None:
    """Fig. 12: how the dense net and LIP tickets fit one image over iterations (snapshot_IIIII.png), per
    image, one seed; rows dense and LIP levels (recipe option ``snapshot_levels``, else three), last the truth."""
    data = imp_levels(x.rows)
    files, drawn = [], []
    keys = [k for k in ("image", "task") if k in data]
    for group, one in data.groupby(keys, dropna=False) if keys and not data.empty else []:
        rows = _snapshot_rows(x, first_run(one))
        if rows and len(files) < GRID_ROWS:
            drawn.append(first_run(one))
            slug = re.sub(r"[^A-Za-z0-9]+", "_", "_".join(str(g) for g in group)).strip("_")
            files.append(figures.cells(rows, x.rep.out / f"snapshots_{slug}.png",
                                       f"{' / '.join(str(g) for g in group)}: the fit over iterations (Fig. 12)"))
    if not files:
        x.rep.add("Snapshots", "no snapshot_IIIII.png images logged yet (the trial's `snapshots` param).", [])
        return
    x.rep.add("Learning process (Fig. 12)", "Per image, one seed: the output at each snapshot iteration of the dense "
              f"net and of LIP tickets, and the truth. Drawn from {run_names(pd.concat(drawn))}.", files)


def write_posterior_grid(x: Inputs, data: pd.DataFrame) -> list:
    """Fig. 16's images: one image and seed; posterior mean and std (scaled to its max, in the caption) at
    dense, a middle level and the sparsest; the truth and observation beside the dense row."""
    if data.empty:
        return []
    chain = first_run(data)
    run_id, levels = chain["run_id"].iloc[0], sorted(int(v) for v in chain["level"])
    rows = {}
    for level in dict.fromkeys([levels[0], levels[len(levels) // 2], levels[-1]]):
        at = chain[chain["level"] == level].iloc[0]
        scale = float(at["posterior_std_max"]) if "posterior_std_max" in at else np.nan
        cells = [(caption, img) for caption, key in (("posterior mean", "posterior_mean"),
                                                     (f"posterior std (max {scale:.3g})", "posterior_std"))
                 if (img := image_at(x.runs, run_id, level, key)) is not None]
        if cells:
            cells += [(name, img) for name, key in (("truth", "clean"), ("observation", "observation"))
                      if level == 0 and (img := image_at(x.runs, run_id, 0, key)) is not None]
            rows[f"{100 * at['sparsity']:.1f}% (level {level})"] = cells
    if not rows:
        return []
    name = " / ".join(str(chain[k].iloc[0]) for k in ("image", "task") if k in chain)
    seed = f", seed {chain['seed'].iloc[0]}" if "seed" in chain else ""
    return [figures.cells(rows, x.rep.out / "sgld_posterior.png", f"{name}{seed}: SGLD posterior (Fig. 16)")]
