"""The report parts of Figs. 2, 10-12, 16, 18-19 and Tables 3 and 5 on small synthetic sweeps logged with
lipsweep's own Tracker (SQLite MLflow store, a store folder of real level files): numbers equal hand-computed
ones, the chosen levels are the right ones, PNGs are grids of the expected size, a partial sweep never crashes."""

import json
import math

import numpy as np
import pandas as pd
import pytest
from lipsweep.analysis import figures
from lipsweep.analysis.report import analyze
from lipsweep.analysis.tables import image_set
from PIL import Image

from lipsweep.core.paths import LEVEL_FILES, artifact_dir
from lipsweep.tracking.tracker import Tracker

ITERS = list(range(0, 501, 50))
X = np.arange(64) / 64
LOW, HIGH = np.cos(2 * np.pi * 2 * X), np.cos(2 * np.pi * 24 * X)  # 0.06 and 0.75 x Nyquist


def waves(low: float, high: float) -> np.ndarray:
    """A 64 px grey image of two horizontal cosines: its high-frequency energy share is high^2/(low^2+high^2)."""
    row = 0.5 + low * LOW + high * HIGH
    return np.repeat(np.tile(row, (64, 1))[..., None], 3, axis=2)


def tile(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).random((16, 16, 3))


def put(tracker: Tracker, store, run: str, level: int, rec: dict, files: dict | None = None) -> None:
    """Write a level's files like the trunk store does, then log it; files MLflow's level list lacks
    (snapshots, posterior images) go up beside it."""
    where = store / run / f"level_{level}"
    where.mkdir(parents=True, exist_ok=True)
    for name, content in (files or {}).items():
        if name.endswith(".png"):
            Image.fromarray((np.clip(content, 0, 1) * 255).round().astype(np.uint8)).save(where / name)
        else:
            (where / name).write_text(json.dumps(content))
    rec = {"level": level, "sparsity": 1 - 0.8**level, **rec, "where": f"{run}/level_{level}"}
    (where / "level.json").write_text(json.dumps(rec))
    tracker.log_level(run, rec, store)
    for f in where.iterdir():
        if f.name not in LEVEL_FILES:
            tracker.client.log_artifact(run, str(f), artifact_dir(level))


def sweep(uri: str, name: str, key: str = "full") -> tuple[Tracker, str]:
    tracker = Tracker(uri, f"lipsweep/{name}")
    return tracker, tracker.parent(f"{name}-{key}", f"{name} [{key}]", {"experiment": name, "profile": key})


def chain(tracker: Tracker, parent: str, label: str, **params) -> str:
    base = {"kind": "chain", "task": "denoise", "method": "imp", "seed": 0, "multi_images": []}
    return tracker.child(parent, label, label, {**base, **params})


def build_parameter_count(uri, store):
    tracker, parent = sweep(uri, "parameter_count")
    for seed in (0, 1):
        run = chain(tracker, parent, f"bird-{seed}", image="Set5/bird", seed=seed)
        for level in range(13):
            kept = round(2000 * 0.8**level)
            files = {"restored.png": tile(level)}
            if level == 0:
                files.update({"clean.png": tile(100), "observation.png": tile(101)})
            put(tracker, store, run, level, {"kept": kept, "total": 2000, "params": 2200, "nonzero_params": 200 + kept,
                                             "psnr_ema": 30 + 0.1 * seed + 0.2 * level - 0.05 * level**2}, files)
    return parent


BENCH = {("denoise", "Set12/01"): 0, ("denoise", "Set12/02"): 1, ("denoise", "inpainting_classic11/boat_GT"): 0,
         ("denoise", "Set5/baby"): 0, ("inpaint", "Set12/01"): 0, ("inpaint", "Set12/02"): 1,
         ("sr4", "Set5/baby"): 0, ("sr4", "Set5/bird"): 1}
TASK_OFFSET = {"denoise": 0.0, "inpaint": 3.0, "sr4": -2.0}


def build_benchmarks(uri, store):
    tracker, parent = sweep(uri, "benchmarks")
    for (task, image), idx in BENCH.items():
        for seed in (0, 1):
            run = chain(tracker, parent, f"{task}-{image}-{seed}", image=image, task=task, seed=seed, channels=3)
            last = 3 if (task, image, seed) == ("inpaint", "Set12/02", 1) else 7  # a chain short of 73.8%
            for level in range(last + 1):
                v = 25 + TASK_OFFSET[task] + 0.5 * idx + 0.1 * seed + 0.2 * level
                rec = {"psnr_ema_peak": v, **({"ypsnr_ema_peak": v + 1} if task == "sr4" else {})}
                put(tracker, store, run, level, rec)
    return parent


RATES = {("image", "dense"): 0.01, ("image", "imp"): 0.02, ("image", "snip"): 0.01, ("image", "random"): 0.005,
         ("noise", "dense"): 0.01, ("noise", "imp"): 0.004, ("noise", "snip"): 0.01, ("noise", "random"): 0.03}


def loss_curve(target: str, mask: str, seed: int) -> list:
    rate = RATES[("image" if target != "noise" else "noise", mask)]
    return [[{"iter": i, "loss": (1 + 0.1 * seed) * math.exp(-rate * i), "psnr": 20.0} for i in ITERS]]


def build_learning_targets(uri, store):
    tracker, parent = sweep(uri, "learning_targets")
    for target, task in (("image", "fit"), ("image", "denoise"), ("permuted", "fit"), ("noise", "fit")):
        for method in ("imp", "snip", "random"):
            for seed in (0, 1):
                label = f"{target}-{task}-{method}-{seed}"
                run = tracker.child(parent, label, label, {
                    "kind": "evaluation", "image": "Set5/baby", "task": task, "target": target, "method": method,
                    "seed": seed, "source_task": "denoise", "source_image": None, "source_multi_images": []})
                for level, mask in ((0, "dense"), (10, method)):
                    put(tracker, store, run, level, {"psnr_ema": 20.0}, {"curve.json": loss_curve(target, mask, seed)})
    return parent


def build_learning_curves(uri, store):
    tracker, parent = sweep(uri, "learning_curves")
    for image, snaps in (("Set5/baby", [100, 200]), ("Set5/bird", None)):
        for seed in (0, 1):
            run = chain(tracker, parent, f"{image}-{seed}", image=image, seed=seed,
                        **({"snapshots": snaps} if snaps else {}))
            for level in range(4):
                curve = [[{"iter": i, "loss": 0.1, "psnr": 19.0 + level, "ssim": 0.5, "ssim_ema": 0.6 + 0.01 * level,
                           "psnr_ema": 20 + level + 0.01 * i + 0.5 * seed} for i in (0, 100, 200)]]
                files = {"restored.png": tile(level), "curve.json": curve,
                         "snapshot_00100.png": tile(10 + level), "snapshot_00200.png": tile(20 + level)}
                if level == 0:
                    files["clean.png"] = tile(100)
                put(tracker, store, run, level, {"psnr_ema": 20.0 + level, "ssim_final": 0.5}, files)
    return parent


def build_sgld(uri, store):
    tracker, parent = sweep(uri, "sgld")
    for image, gain in (("Set14/baboon", 0.0), ("Set14/pepper", 1.0)):
        for seed in (0, 1, 2):
            run = chain(tracker, parent, f"{image}-{seed}", image=image, seed=seed, burnin=10)
            for level in range(5):
                v = 24 + gain + 0.3 * level + 0.2 * seed
                files = {"posterior_mean.png": tile(level), "posterior_std.png": tile(50 + level)}
                if level == 0:
                    files.update({"clean.png": tile(100), "observation.png": tile(101)})
                rec = {"psnr_posterior": v, "psnr_ema": v - 1, "posterior_std_max": 0.1}
                put(tracker, store, run, level, rec, files)
    return parent


FFT_IMAGES = {("imp", 0): waves(0.3, 0.15), ("imp", 1): waves(0.3, 0.15), ("snip", 0): waves(0.3, 0.1),
              ("snip", 1): waves(0.3, 0.2), ("random", 0): waves(0.3, 0.0), ("random", 1): waves(0.3, 0.0)}


def build_fft(uri, store):
    """Two seeds per method; LIP's final EMA image is blurrier than its logged peak-EMA image."""
    tracker, parent = sweep(uri, "fft")
    for (method, seed), img in FFT_IMAGES.items():
        run = chain(tracker, parent, f"fft-{method}-{seed}", image="Set5/baby", method=method, seed=seed)
        for level in range(8):
            files = {"restored.png": waves(0.3, 0.05) if method == "imp" else img}
            files.update({"ema_peak.png": img} if method == "imp" else {})
            files.update({"clean.png": waves(0.3, 0.15)} if level == 0 else {})
            put(tracker, store, run, level, {"psnr_ema": 25.0 - 0.1 * level}, files)
    return parent


def build_partial(uri, store, name):
    """A sweep that has logged only its dense level, with no files besides the record."""
    tracker, parent = sweep(uri, name, "partial")
    run = tracker.child(parent, f"{name}-partial", "partial", {"kind": "chain", "image": "Set5/baby",
                                                               "task": "denoise", "method": "imp", "seed": 0})
    tracker.log_level(run, {"level": 0, "sparsity": 0.0, "psnr_ema": 20.0}, None)
    return parent


BUILDERS = {"parameter_count": build_parameter_count, "benchmarks": build_benchmarks,
            "learning_targets": build_learning_targets, "learning_curves": build_learning_curves,
            "sgld": build_sgld, "fft": build_fft}


@pytest.fixture(scope="module")
def sweeps(tmp_path_factory):
    root = tmp_path_factory.mktemp("parts")
    uri, store = f"sqlite:///{root / 'mlflow.db'}", root / "store"
    full = {name: build(uri, store) for name, build in BUILDERS.items()}
    partial = {name: build_partial(uri, store, name) for name in BUILDERS}
    return uri, root, full, partial


def report(sweeps, name, **kw):
    """The report of a full sweep, written once per (name, options) for all tests of the module."""
    uri, root, full, _ = sweeps
    out = root / ("report-" + "-".join([name, *(f"{k}{v}" for k, v in sorted(kw.items()))]))
    if not (out / "index.md").is_file():
        analyze(name, uri, out, log_to_mlflow=False, parent=full[name], **kw)
    return out


def grid_size(cols: int, rows: int) -> tuple[int, int]:
    w, h = figures.CELL_INCHES
    return round(w * cols * figures.CELLS_DPI), round(h * rows * figures.CELLS_DPI)


def test_table3_picks_the_level_nearest_a_tenth_of_the_dense_parameters(sweeps):
    out = report(sweeps, "parameter_count")
    table = pd.read_csv(out / "table3.csv").set_index("model")
    # non-zero 200 + kept: 0.2/2.2 of 2200 = 200 is nearest the sparsest level (12: 337), not kept's level 11
    assert table.loc["LIP", "level"] == 12 and table.loc["LIP", "parameters"] == 200 + round(2000 * 0.8**12)
    assert table.loc["dense", "parameters"] == 2200 and table.loc["dense", "paper PSNR"] == 30.35
    assert table.loc["LIP", "psnr_ema"] == "25.25 ± 0.07" and table.loc["dense", "psnr_ema"] == "30.05 ± 0.07"
    assert table.loc["LIP", "paper parameters"] == "0.2M"


def test_visual_grid_ends_at_the_sparsest_matching_ticket(sweeps):
    out = report(sweeps, "parameter_count")
    grid = pd.read_csv(out / "visual_grid.csv")
    assert list(grid["column"]) == ["truth", "observation", "dense", "LIP", "LIP", "LIP", "matching", "sparsest"]
    # seed 0: 30 + 0.2 L - 0.05 L^2 stays within 0.5 dB of 30 up to level 5 (29.75; level 6: 29.4)
    assert list(grid["level"]) == [0, 0, 0, 1, 2, 4, 5, 12] and set(grid["matching_level"]) == {5}
    assert Image.open(out / "visual_grid.png").size == grid_size(8, 1)
    wider = report(sweeps, "parameter_count", delta=1.0)
    assert set(pd.read_csv(wider / "visual_grid.csv")["matching_level"]) == {6}  # 29.4 >= 29.0 > 28.95


def test_table5_sets_tasks_y_psnr_and_paper_columns(sweeps):
    out = report(sweeps, "benchmarks", metric="psnr_ema_peak")
    table = pd.read_csv(out / "table5.csv").set_index(["task", "set"])
    set12 = table.loc[("denoise", "Set12")]
    assert set12["DIP mean"] == pytest.approx(25.30) and set12["LIP mean"] == pytest.approx(26.50)
    assert set12["DIP"] == "25.30 ± 0.07" and (set12["paper DIP"], set12["paper LIP"]) == (27.92, 28.12)
    assert set12["LIP sparsity"] == "73.79%" and set12["images"] == 2 and set12["seeds"] == 2
    sr = table.loc[("sr4", "Set5")]
    assert sr["metric"] == "ypsnr_ema_peak" and sr["DIP mean"] == pytest.approx(24.30) and sr["paper LIP"] == 30.52
    # one inpainting chain stopped at level 3: seed 1's LIP is image 01 alone (28.1 + 1.2), seed 0's both images
    assert table.loc[("inpaint", "Set12"), "LIP mean"] == pytest.approx((29.45 + 29.3) / 2)
    assert table.loc[("denoise", "inpainting_classic11"), "paper set"] == "BM3D"
    assert table.loc[("denoise", "Set5"), "paper set"] == "CBM3D"
    assert list(table.reset_index()["task"]) == ["denoise"] * 3 + ["inpaint", "sr4"]


def test_image_set_of_names_and_paths():
    assert image_set("Set12/01") == "Set12" and image_set("/data/CBSD68/0001.png") == "CBSD68"
    assert image_set("DIP/denoising/F16_GT") == "DIP/denoising"


def test_learning_targets_threshold_iterations(sweeps):
    out = report(sweeps, "learning_targets")
    table = pd.read_csv(out / "learning_targets_iters.csv").set_index(["target", "task", "mask"])
    image, noise = table.loc[("image", "fit")], table.loc[("noise", "fit")]
    # threshold 2 x dense final: exp(-r i) <= 2 exp(-5)  <=>  i >= (5 - ln 2) / r, on the 50-iteration grid
    assert image.loc["LIP", "iter_to_threshold"] == 250 and image.loc["dense", "iter_to_threshold"] == 450
    assert pd.isna(image.loc["random", "iter_to_threshold"]) and noise.loc["random", "iter_to_threshold"] == 150
    assert pd.isna(noise.loc["LIP", "iter_to_threshold"]) and image.loc["LIP", "iter_to_half_initial"] == 50
    assert image.loc["dense", "threshold"] == pytest.approx(2 * 1.05 * math.exp(-5), rel=1e-4)
    assert image.loc["dense", "seeds"] == 2 and image.loc["SNIP", "sparsity"] == pytest.approx(1 - 0.8**10, abs=1e-4)
    assert ("image", "denoise") in table.index.droplevel("mask")  # the noisy target: its own panel
    assert Image.open(out / "learning_targets.png").size[0] > 800


def test_learning_curves_and_snapshot_grids(sweeps):
    out = report(sweeps, "learning_curves")
    curves = pd.read_csv(out / "learning_curves.csv")
    cell = curves.query("metric == 'psnr_ema' and image == 'Set5/baby' and level == 2 and iter == 100").iloc[0]
    assert cell["mean"] == pytest.approx(23.25) and cell["n"] == 2 and cell["sparsity"] == pytest.approx(0.36)
    assert set(curves["metric"]) == {"psnr_ema", "ssim_ema"}
    for slug in ("Set5_baby_denoise", "Set5_bird_denoise"):  # the bird's iterations come from its artifact list
        assert Image.open(out / f"snapshots_{slug}.png").size == grid_size(3, 4)  # 2 snapshots + truth; 4 levels


def test_sgld_curves_table_and_posterior_grid(sweeps):
    out = report(sweeps, "sgld")
    table = pd.read_csv(out / "sgld.csv", dtype=str).set_index(["image", "task", "metric"])
    assert table.loc[("Set14/baboon", "denoise", "psnr_posterior"), "59.0%"] == "25.40 ± 0.20"
    assert table.loc[("Set14/pepper", "denoise", "psnr_ema"), "0.0%"] == "24.20 ± 0.20"
    assert Image.open(out / "sgld_posterior.png").size == grid_size(4, 3)  # dense, level 2, level 4
    assert Image.open(out / "sgld.png").size[0] > 800


def test_fft_high_frequency_share_per_method(sweeps):
    out = report(sweeps, "fft")
    table = pd.read_csv(out / "fft_high_frequency.csv")
    at = table[table["target_sparsity"] == 0.67].set_index("method")
    assert at.loc["LIP", "level"] == 5 and table[table["target_sparsity"] == 0.79]["level"].max() == 7
    assert (at["seeds"] == 2).all()
    # 8-bit PNGs of the cosines move the shares by < 2e-3
    assert at.loc["truth", "hf_ratio"] == pytest.approx(0.15**2 / (0.3**2 + 0.15**2), abs=2e-3)
    snip = [h**2 / (0.3**2 + h**2) for h in (0.1, 0.2)]
    assert at.loc["SNIP", "hf_ratio"] == pytest.approx(np.mean(snip), abs=2e-3)
    assert at.loc["SNIP", "hf_ratio_std"] == pytest.approx(np.std(snip, ddof=1), abs=2e-3)
    assert at.loc["random", "hf_ratio"] == pytest.approx(0.0, abs=2e-3)
    # the peak-EMA image, not the blurrier final one, where the level logged it
    assert at.loc["LIP", "file"] == "ema_peak.png" and at.loc["random", "file"] == "restored.png"
    assert at.loc["LIP", "relative"] == pytest.approx(1.0, abs=1e-2)
    # the error spectrum: none for the truth and LIP; random misses all of the truth's high band
    assert at.loc["truth", "hf_error_share"] == 0.0 and at.loc["LIP", "hf_error_vs_truth"] == pytest.approx(0, abs=2e-3)
    assert at.loc["random", "hf_error_share"] == pytest.approx(1.0, abs=1e-2)
    assert at.loc["random", "hf_error_vs_truth"] == pytest.approx(1.0, abs=2e-2)
    for pct in (67, 79):
        assert Image.open(out / f"fft_{pct}.png").size == (round(3.2 * 4 * 100), 920)
    assert "ema_peak.png" in (out / "index.md").read_text()


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_a_sweep_with_only_its_dense_level_gets_one_sentence_per_part(sweeps, name):
    uri, root, _, partial = sweeps
    rep = analyze(name, uri, root / f"partial-{name}", log_to_mlflow=False, parent=partial[name])
    index = (root / f"partial-{name}" / "index.md").read_text()
    assert "## Data" in index and len(rep.sections) >= 3
    short = [title for title, sentence, files in rep.sections if not files]
    assert short and all(s.endswith(".") for _, s, f in rep.sections if not f)
