"""The classification-transfer report (paper Fig. 6, Fig. 7c/f): accuracy vs sparsity of the classification
ticket, random pruning and the transferred denoising LIP; PSNR on denoising of the classification ticket
vs the denoising LIP; and the per-layer densities of both kinds of ticket at matched sparsities."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from . import figures
from .curves import (
    LAYERWISE,
    Densities,
    Profiles,
    layer_profiles,
    logged_densities,
    panels,
    sparsity_table,
    write_profiles,
)
from .inputs import Inputs, Report
from .lines import run_names
from .stats import given

FIG7_SPARSITIES = (0.36, 0.49, 0.59, 0.83, 0.89, 0.95)  # Fig. 7c/f's classification tickets
MATCH_TOLERANCE = 0.03  # a level farther than this from a target sparsity does not stand for it


# What each classify_recipe is (the section text names the recipe of every curve; issue 27).
RECIPES = {
    "reference": "the reference code's recipe (LTH_IMP_Classification.py: fresh 3-channel input convs never "
                 "pruned, the 1x1 output conv + Flatten -> Linear -> Sigmoid, SGD (class_lr, default 0.01) stepped "
                 "down at 1/2 and 3/4 of the epochs, no rewinding: each level trains on from the last level's trained "
                 "weights)",
    "lth": "lipsweep's LTH recipe (mean pooling + a linear head, RGB zero-padded to the input depth, Adam, rewind "
           "to theta_0 every level)",
}


def recipe_of(row: pd.Series) -> str | None:
    """The classifier recipe behind a row: every classification run's (runs logged before the field: lth);
    None for a DIP chain fitted on its own restoration task, where no classifier is involved."""
    if row.get("kind") == "classify_transfer" and _source(row):
        return None
    return str(given(row, "classify_recipe", "lth"))


def _source(row: pd.Series) -> object:
    return given(row, "source_task") or given(row, "source_image") or given(row, "source_multi_images", ())


def series_label(row: pd.Series) -> str:
    """Where the mask came from: the classification ticket (or random pruning) or a DIP chain's mask (the
    denoising LIP, a random chain), named by its source task; and in brackets the recipe that trained it."""
    method, recipe = str(row.get("method")), recipe_of(row)
    if not _source(row):
        label = "classification ticket" if method == "imp" else f"classification {method}"
    else:
        task = given(row, "source_task", row.get("task"))
        label = f"{task} LIP" if method == "imp" else f"{task} {method}"
    return f"{label} ({recipe})" if recipe else label


def _with_series(frame: pd.DataFrame) -> pd.DataFrame:
    """Rows with a level, labelled by series; ``classify_recipe`` filled (runs logged before it: lth)."""
    data = frame.dropna(subset=["level"])
    if data.empty:
        return data.assign(series=pd.Series(dtype=str))
    if "classify_recipe" in data:
        data = data.assign(classify_recipe=data["classify_recipe"].fillna("lth"))
    return data.assign(series=data.apply(series_label, axis=1))


def _curves(rep: Report, data: pd.DataFrame, facet: list[str], metric: str, stem: str, title: str) -> list[Path]:
    """One panel per logged facet value, one line per series; the table labels a level by its mean sparsity
    per facet (a DIP mask on the classifier drops the convs the recipe never masks, so series differ by ~0.1%
    at one level)."""
    if data.empty or metric not in data or data[metric].isna().all():
        return []
    facet = [f for f in facet if f in data]
    label_by = [f for f in facet if f != "classify_recipe"]  # one column per level across the recipes' panels
    path = figures.curves(panels(data, facet, ["series"], metric, named=False), metric, rep.out / f"{stem}.png", title)
    return [path, *sparsity_table(rep.out, data, [*facet, "series"], metric, stem, label_by=label_by,
                                  count_seeds=False)]


def _recipes_text(data: pd.DataFrame) -> str:
    """Which recipe produced which curves: every recipe the rows logged, described."""
    found = sorted({r for r in data.apply(recipe_of, axis=1) if isinstance(r, str)}) if not data.empty else []
    return " ".join(f"({r}): {RECIPES.get(r, r)}." for r in found)


def write_classification(x: Inputs) -> None:
    """The report part: every trial of the sweep; layer densities from each level's logged record."""
    classification_report(x.rep, x.frame, logged_densities(x.runs))


def classification_report(rep: Report, frame: pd.DataFrame, densities: Densities, psnr: str = "psnr_ema") -> None:
    """Fig. 6's two panels (accuracy; PSNR on the restoration target) and Fig. 7c/f's layer profiles; one
    accuracy panel per data set and recipe, every classification series naming its recipe."""
    data = _with_series(frame)
    kind = data["kind"] if "kind" in data else pd.Series("", index=data.index)
    accuracy, transfer = data[kind == "classify"], data[kind == "classify_transfer"]
    files = _curves(rep, accuracy, ["data", "classify_recipe"], "accuracy", "accuracy",
                    "test accuracy vs sparsity (Fig. 6a/c)")
    rep.add("Classification accuracy", "Test accuracy per level of the classification ticket, random pruning at "
            "the same counts and DIP chains' masks (the denoising LIP, a random chain) trained on the same set "
            "from the same theta_0; one panel per data set and recipe, the recipe in brackets after each series: "
            f"{_recipes_text(accuracy)} Mean ± 1 std over seeds, dashed: the dense classifier. Drawn from "
            f"{run_names(accuracy)}.", files)
    files = _curves(rep, transfer, ["data", "image", "task"], psnr, "transfer_psnr",
                    "restoration PSNR vs sparsity (Fig. 6b/d)")
    rep.add("Classification tickets on restoration", f"{psnr} per level of the classification ticket's masks "
            "fitted as a DIP (the convs its classifier never masks kept dense: the output conv under lth, the input "
            "convs under reference), the recipe that made the ticket in brackets: "
            f"{_recipes_text(transfer)} Next to them the denoising LIP (no recipe: no classifier); dashed: the "
            f"dense DIP. Drawn from {run_names(transfer)}.", files)
    write_layers(rep, data, densities)


def _profiles(data: pd.DataFrame, densities: Densities) -> Profiles:
    """Every run of every series (all seeds) at each Fig. 7 sparsity it reached within the tolerance."""
    return layer_profiles(data.drop_duplicates("run_id"), data[data["level"] > 0], "series", FIG7_SPARSITIES,
                          densities, MATCH_TOLERANCE)


def write_layers(rep: Report, data: pd.DataFrame, densities: Densities) -> None:
    """Fig. 7c/f: per-layer density of the classification ticket and the denoising LIP, layers in forward
    order, and the size-weighted group table against theta_0's magnitude null (the LIP keeps early layers;
    LTH on classification keeps the middle ones, the paper reports)."""
    write_profiles(rep, _profiles(data, densities) if not data.empty else ([], [], []),
                   "per-layer density: classification tickets vs the denoising LIP (Fig. 7c/f)",
                   "Classification tickets and DIP chains' masks (every seed) at matched sparsities. " + LAYERWISE,
                   "no pruned level near 36/49/59/83/89/95% logged yet.")
