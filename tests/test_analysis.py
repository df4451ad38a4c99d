"""analysis/ on a small synthetic sweep written with the real MLflow API (SQLite store)."""

import json

import numpy as np
import pandas as pd
import pytest
from lipsweep.analysis.layers import theta0_weights, type_profile
from lipsweep.analysis.report import analyze
from lipsweep.analysis.runs import Runs
from lipsweep.analysis.stats import (
    curve_stats,
    forward_order,
    transfer_matrix,
)
from PIL import Image

from lipsweep.tracking.tracker import Tracker

LAYERS = ["levels.0.skip.conv", "levels.0.down1.conv", "levels.0.down2.conv", "levels.0.up1.conv",
          "levels.0.up2.conv", "levels.1.skip.conv", "levels.1.down1.conv", "levels.1.down2.conv",
          "levels.1.up1.conv", "levels.1.up2.conv", "head"]


def psnr_of(method: str, seed: int, level: int) -> float:
    return 25.0 + (0.5 if method == "imp" else -0.7) * level + 0.1 * seed


def record(level: int, psnr: float, method: str, tmp_path, run: str) -> dict:
    sparsity = 1 - 0.8**level
    # IMP keeps early layers denser than late ones; random is uniform
    dens = {n: (min(1.0, (1 - sparsity) * (1.6 - i / len(LAYERS))) if method == "imp" else 1 - sparsity)
            for i, n in enumerate(LAYERS)}
    where = tmp_path / "store" / run / f"level_{level}"
    where.mkdir(parents=True, exist_ok=True)
    rec = {"level": level, "sparsity": sparsity, "density": 1 - sparsity, "kept": int(1000 * 0.8**level),
           "total": 1000, "imp_loss": 0.01 + 0.001 * level, "psnr_final": psnr, "psnr_ema": psnr + 0.3,
           "psnr_peak": psnr + 0.5, "ssim_final": 0.8, "layer_densities": dens,
           "where": where.relative_to(tmp_path / "store").as_posix()}
    (where / "level.json").write_text(json.dumps(rec))
    rng = np.random.default_rng(level + (0 if method == "imp" else 100))
    img = (rng.random((64, 64, 3)) * 255 * (0.3 if method == "imp" else 1)).astype(np.uint8)
    Image.fromarray(img).save(where / "restored.png")
    return rec


@pytest.fixture
def chain_store(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = Tracker(uri, "lipsweep/lip_existence")
    parent = tracker.parent("sweep-key", "lip_existence [smoke]", {"experiment": "lip_existence", "profile": "smoke"})
    for method in ("imp", "random"):
        for seed in range(3):
            run_name = f"{method}-{seed}"
            params = {"kind": "chain", "image": "Set5/baby", "task": "denoise", "method": method, "seed": seed,
                      "multi_images": [], "model": "dip", "width": 16}
            run = tracker.child(parent, f"key-{run_name}", run_name, params)
            last = 3 if not (method == "random" and seed == 2) else 1  # a partial trial
            for level in range(last + 1):
                tracker.log_level(run, record(level, psnr_of(method, seed, level), method, tmp_path, run_name),
                                  tmp_path / "store")
            tracker.finish(run)
    return uri


def test_tidy_table_has_one_row_per_trial_and_level(chain_store):
    runs = Runs(chain_store, "lip_existence")
    frame = runs.table(runs.parent())
    assert len(frame) == 3 * 4 + 2 * 4 + 2 and frame["run_id"].nunique() == 6
    assert set(frame["method"]) == {"imp", "random"} and frame["seed"].dtype.kind == "i"


def test_curve_means_and_stds_equal_hand_computed_values(chain_store):
    runs = Runs(chain_store, "lip_existence")
    stats = curve_stats(runs.table(runs.parent()), ["method"], "psnr_final")
    row = stats[(stats["method"] == "imp") & (stats["level"] == 2)].iloc[0]
    values = [psnr_of("imp", s, 2) for s in range(3)]
    assert row["mean"] == pytest.approx(np.mean(values)) and row["std"] == pytest.approx(np.std(values, ddof=1))
    assert row["n"] == 3 and row["sparsity"] == pytest.approx(0.36)
    partial = stats[(stats["method"] == "random") & (stats["level"] == 3)].iloc[0]
    assert partial["n"] == 2  # the partial seed is missing there, not a crash


def test_layerwise_densities_and_size_weighted_groups_equal_the_stored_masks(chain_store, tmp_path):
    out = tmp_path / "report"
    analyze("lip_existence", chain_store, out, log_to_mlflow=False)
    table = pd.read_csv(out / "layerwise.csv")
    imp = table[(table["method"] == "imp") & (table["target_sparsity"] == 0.36) & (table["seed"] == 0)]
    stored = json.loads((tmp_path / "store" / "imp-0" / "level_2" / "level.json").read_text())["layer_densities"]
    assert dict(zip(imp["layer"], imp["density"])) == pytest.approx(stored)
    assert list(imp["layer"]) == forward_order(LAYERS)
    types = pd.read_csv(out / "layerwise_types.csv")
    at = types[types["target_sparsity"] == 0.36].set_index(["method", "group"])
    assert at.loc[("imp", "encoder 3x3"), "n"] == 3  # every seed, not the first alone
    sizes = {n: w.numel() for n, w in theta0_weights(pd.Series({"width": 16, "seed": 0})).items()}
    early = type_profile(stored, sizes)["early third"]
    assert at.loc[("imp", "early third"), "density"] == pytest.approx(early, abs=1e-4)
    assert at.loc[("imp", "early third"), "excess_null"] > 0.1  # the fixture's IMP keeps early layers
    assert at.xs("random", level="method")["excess_random"].abs().max() < 1e-4
    index = (out / "index.md").read_text()
    assert "**random** (random pruning is uniform)" in index and "supported at 36%" in index
    assert "**imp** (LIP keeps the early layers): early third density - theta_0 null = +" in index
    for name in ("layerwise_excess.png", "layerwise_cumulative.png", "layerwise_types.md"):
        assert (out / name).is_file()


def test_forward_order_follows_the_hourglass():
    assert forward_order(LAYERS) == ["levels.0.skip.conv", "levels.0.down1.conv", "levels.0.down2.conv",
                                     "levels.1.skip.conv", "levels.1.down1.conv", "levels.1.down2.conv",
                                     "levels.1.up1.conv", "levels.1.up2.conv", "levels.0.up1.conv",
                                     "levels.0.up2.conv", "head"]


def test_report_files_exist_and_pngs_are_real_pictures(chain_store, tmp_path):
    out = tmp_path / "report"
    rep = analyze("lip_existence", chain_store, out)
    for name in ("index.md", "curves_psnr_ema.png", "curves_ssim_final.png", "table.md", "table.csv",
                 "layerwise.png", "fft.png", "runs.csv"):
        assert (out / name).is_file(), name
    for png in out.glob("*.png"):
        img = np.asarray(Image.open(png).convert("L"), dtype=float)
        assert img.shape[0] > 200 and img.shape[1] > 300 and img.std() > 5, png
    index = (out / "index.md").read_text()
    assert "![curves_psnr_ema.png](curves_psnr_ema.png)" in index and "23.25 ± 0.07 (n=2)" in (out / "table.md").read_text()
    figured = [sec for sec in index.split("\n## ")[1:] if ".png)" in sec]  # issue 28: every figure names its runs
    named = [sec for sec in figured if any(w in sec for w in ("Drawn from ", "Runs drawn: ", "The same runs as ",
                                                             "one seed: run "))]
    assert len(figured) >= 4 and named == figured, [sec.splitlines()[0] for sec in figured if sec not in named]
    runs = Runs(chain_store, "lip_existence")
    logged = [a.path for a in runs.client.list_artifacts(runs.parent(), "analysis")]
    assert "analysis/index.md" in logged and rep.files


@pytest.fixture
def transfer_store(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = Tracker(uri, "lipsweep/transfer_tasks")
    parent = tracker.parent("sweep-t", "transfer_tasks [smoke]", {"profile": "smoke"})
    value = {}
    for src in ("denoise", "sr4"):
        for tgt in ("denoise", "sr4", "inpaint"):
            if (src, tgt) == ("sr4", "inpaint"):
                continue  # a cell the sweep has not reached
            run = tracker.child(parent, f"{src}-{tgt}", f"{src}->{tgt}", {
                "kind": "evaluation", "image": "Set5/baby", "task": tgt, "source_task": src, "seed": 0,
                "source_image": None, "source_multi_images": []})
            for level in range(4):
                v = 20 + level + (1.5 if src == tgt else 0) + (0.25 if tgt == "sr4" else 0)
                value[(src, tgt, level)] = v
                tracker.log_level(run, {"level": level, "sparsity": 1 - 0.8**level, "psnr_ema": v}, None)
    return uri, value


def test_transfer_matrix_cells_are_the_right_runs_metric_and_missing_cells_render(transfer_store, tmp_path):
    uri, value = transfer_store
    runs = Runs(uri, "transfer_tasks")
    matrix, relative = transfer_matrix(runs.table(runs.parent()), "psnr_ema", 0.5)  # level 3 = 48.8%
    assert matrix.loc["Set5/baby / denoise", "Set5/baby / sr4"] == value[("denoise", "sr4", 3)]
    assert matrix.loc["Set5/baby / sr4", "Set5/baby / sr4"] == value[("sr4", "sr4", 3)]
    assert relative.loc["Set5/baby / denoise", "Set5/baby / sr4"] == pytest.approx(-1.5)
    assert np.isnan(matrix.loc["Set5/baby / sr4", "Set5/baby / inpaint"])
    out = tmp_path / "t"
    analyze("transfer_tasks", uri, out, sparsity=0.5)
    csv = pd.read_csv(out / "transfer.csv", index_col=0)
    assert csv.loc["Set5/baby / denoise", "Set5/baby / denoise"] == value[("denoise", "denoise", 3)]
    assert Image.open(out / "transfer.png").size[0] > 300


def test_analyze_cli_on_an_unknown_experiment_is_a_clear_error(tmp_path, capsys):
    from mlflow import MlflowClient

    from lipsweep.cli.main import main

    uri = f"sqlite:///{tmp_path / 'x.db'}"
    MlflowClient(tracking_uri=uri).search_experiments()  # a store that exists, without this experiment
    assert main(["analyze", "rewind_ablation", "--tracking-uri", uri, "--out", str(tmp_path / "o")]) == 2
    assert "no MLflow experiment 'lipsweep/rewind_ablation'" in capsys.readouterr().err


def test_table_never_pools_images_or_tasks(tmp_path):
    """Two images x two tasks x two seeds: each (image, task, method) row holds only its own two seeds."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = Tracker(uri, "lipsweep/lip_existence")
    parent = tracker.parent("facets", "lip_existence [smoke]", {"experiment": "lip_existence", "profile": "smoke"})
    offset = {("Set5/baby", "denoise"): 0.0, ("Set5/bird", "denoise"): 3.0, ("Set5/baby", "sr4"): -4.0,
              ("Set5/bird", "sr4"): 8.0}
    for (image, task), base in offset.items():
        for seed in (0, 1):
            name = f"{image}-{task}-{seed}"
            params = {"kind": "chain", "image": image, "task": task, "method": "imp", "seed": seed,
                      "multi_images": [], "model": "dip", "width": 16}
            run = tracker.child(parent, f"key-{name}", name, params)
            for level in range(2):
                tracker.log_level(run, {"level": level, "sparsity": 1 - 0.8**level, "imp_loss": 0.01,
                                        "psnr_ema": 20.0 + base + seed + level, "ssim_final": 0.5,
                                        "layer_densities": {"head": 0.8**level}}, None)
            tracker.finish(run)
    analyze("lip_existence", uri, tmp_path / "report", log_to_mlflow=False)
    table = pd.read_csv(tmp_path / "report" / "table.csv")
    assert len(table) == 4 and set(table.columns[:3]) == {"image", "task", "series"}  # Fig. 3's legend
    row = table[(table["image"] == "Set5/bird") & (table["task"] == "sr4")].iloc[0]
    assert row["0.0%"] == "28.50 ± 0.71" and row["20.0%"] == "29.50 ± 0.71"  # 28 and 29 (+1): this cell only


def test_fig4_table_puts_multi_lip_single_lip_and_random_side_by_side_per_image(tmp_path):
    """Fig. 4: evaluation trials of one Multi-LIP mask on each image, next to that image's own LIP and random."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = Tracker(uri, "lipsweep/multi_image")
    parent = tracker.parent("fig4", "multi_image [smoke]", {"experiment": "multi_image", "profile": "smoke"})
    series = {"multi": ("imp", ["Set5/bird", "Set5/head"], 2.0), "single": ("imp", [], 1.0),
              "random": ("random", [], -1.0)}
    for image, base in (("DIP/F16_GT", 20.0), ("Set5/woman", 30.0)):
        for name, (method, multi, gain) in series.items():
            run = tracker.child(parent, f"{image}-{name}", f"{image} {name}", {
                "kind": "evaluation", "image": image, "task": "denoise", "method": method, "seed": 0,
                "source_image": "Set5/baby" if multi else None, "source_multi_images": multi, "multi_images": []})
            for level in range(3):
                tracker.log_level(run, {"level": level, "sparsity": 1 - 0.8**level, "imp_loss": 0.01,
                                        "psnr_ema": base + gain * level, "ssim_final": 0.5}, None)
            tracker.finish(run)
    analyze("multi_image", uri, tmp_path / "report", log_to_mlflow=False)
    table = pd.read_csv(tmp_path / "report" / "table.csv", dtype=str).set_index(["image", "task", "mask"])
    assert len(table) == 6
    assert table.loc[("Set5/woman", "denoise", "Multi-LIP (3 images)"), "36.0%"] == "34.00"
    assert table.loc[("DIP/F16_GT", "denoise", "single-image LIP"), "36.0%"] == "22.00"
    assert table.loc[("DIP/F16_GT", "denoise", "random"), "20.0%"] == "19.00"
    runs = Runs(uri, "multi_image")
    _, relative = transfer_matrix(runs.table(runs.parent()).query("method == 'imp'"), "psnr_ema", 0.36)
    assert relative.loc["Set5/baby+2 / denoise", "DIP/F16_GT / denoise"] == pytest.approx(2.0)  # vs F16's own LIP
