"""The fit_early_stop report (issue 29): per task and subnetwork the oracle peak, what ES-WMV returns, the gap,
where it stops and what it saves; a figure of the gaps; a reading paragraph (LIPs vs dense and random, the saving
per IMP chain). Numbers from a hand-made sweep logged with lipsweep's own Tracker (SQLite MLflow store), checked
against sums done by hand; and the smoke profile end to end, its table against a replay of the stored traces."""

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from lipsweep.analysis.report import analyze
from PIL import Image

from lipsweep.experiments.spec import load
from lipsweep.fitting.early_stop import detect, scores
from lipsweep.tracking.tracker import Tracker

ITERS, PATIENCE = 100, 20
TASK_BASE = {"denoise": 0.0, "sr4": 1.0}  # dB added to every gap of the task
# (method, level) -> (sparsity, subnetwork, gap before the task's base and 0.1 dB per seed)
LEVELS = {("imp", 0): (0.0, "dense", 0.1), ("imp", 1): (0.36, None, 0.15), ("imp", 2): (0.5904, "LIP ~59%", 0.2),
          ("imp", 3): (0.8926, "LIP ~89%", 0.3), ("random", 0): (0.0, "dense", 0.1),
          ("random", 1): (0.5904, "random ~59%", 0.6), ("random", 2): (0.8926, "random ~89%", 0.9)}
UNCONFIRMED = ("sr4", "random", 2, 1)  # its detector never confirms: it saves nothing


def record(task: str, method: str, level: int, seed: int) -> dict:
    """A level's es_* record: the detection at 30 + 10 level + 5 seed, confirmed PATIENCE later."""
    sparsity, _, gap = LEVELS[(method, level)]
    es_iter = 30 + 10 * level + 5 * seed
    confirmed = (task, method, level, seed) != UNCONFIRMED
    run = es_iter + PATIENCE if confirmed else ITERS
    peak = 25.0 + level + seed
    return {"level": level, "sparsity": sparsity, "psnr_ema_peak": peak, "psnr_ema": peak - 1.5,
            "es_gap": TASK_BASE[task] + gap + 0.1 * seed, "psnr_es": peak - (TASK_BASE[task] + gap + 0.1 * seed),
            "es_iter": es_iter, "ema_peak_iter": es_iter - 10, "es_confirmed": float(confirmed),
            "es_iters_run": run, "es_saved": ITERS - run, "es_peak_width": 40 + 2 * level}


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("es_report")
    uri = f"sqlite:///{tmp}/mlflow.db"
    tracker = Tracker(uri, "lipsweep/fit_early_stop")
    parent = tracker.parent("es-hand", "fit_early_stop [local]", {"experiment": "fit_early_stop", "profile": "local"})
    for task in TASK_BASE:
        for method, levels in (("imp", 4), ("random", 3)):
            for seed in (0, 1):
                label = f"{task} {method} s{seed}"
                run = tracker.child(parent, label, label, {
                    "kind": "chain", "image": "Set5/baby", "task": task, "method": method, "seed": seed,
                    "iters": ITERS, "early_stop": "wmv", "multi_images": []})
                for level in range(levels):
                    tracker.log_level(run, record(task, method, level, seed), None)
    rep = analyze("fit_early_stop", uri, tmp / "out", log_to_mlflow=False)
    return rep, tmp / "out"


def test_the_table_has_one_row_per_task_and_subnetwork_with_hand_computed_seed_means(report):
    _, out = report
    table = pd.read_csv(out / "early_stop.csv")
    assert list(zip(table["task"], table["subnetwork"])) == [
        (t, s) for t in ("denoise", "sr4") for s in ("dense", "LIP ~59%", "LIP ~89%", "random ~59%", "random ~89%")]
    row = table.set_index(["task", "subnetwork"])
    assert row.loc[("denoise", "dense"), "runs"] == 2  # the dense level both chains log is one fit per seed
    assert row.loc[("denoise", "LIP ~89%"), "es_gap"] == pytest.approx(0.35)  # (0.3 + 0.4) / 2
    assert row.loc[("denoise", "LIP ~89%"), "es_gap_std"] == pytest.approx(np.std([0.3, 0.4], ddof=1), abs=1e-4)  # the csv: 4 decimals
    assert row.loc[("sr4", "random ~89%"), "es_gap"] == pytest.approx(1.95)  # 1 + (0.9 + 1.0) / 2
    assert row.loc[("sr4", "LIP ~59%"), "psnr_ema_peak"] == pytest.approx(27.5)  # level 2: 25 + 2 + seed
    assert row.loc[("sr4", "LIP ~59%"), "psnr_es"] == pytest.approx(27.5 - 1.25)
    assert row.loc[("sr4", "LIP ~59%"), "psnr_ema"] == pytest.approx(26.0)
    assert row.loc[("denoise", "LIP ~89%"), "es_iter"] == pytest.approx(62.5)  # 30 + 30 + 5 seed
    assert row.loc[("denoise", "LIP ~89%"), "ema_peak_iter"] == pytest.approx(52.5)
    assert row.loc[("denoise", "LIP ~89%"), "es_saved"] == pytest.approx(17.5)  # 100 - 62.5 - 20
    assert row.loc[("denoise", "LIP ~89%"), "saved_pct"] == pytest.approx(17.5)
    assert row.loc[("sr4", "random ~89%"), "confirmed"] == 1  # seed 1 never confirmed
    assert row.loc[("sr4", "random ~89%"), "es_saved"] == pytest.approx((100 - 50 - 20 + 0) / 2)
    assert row.loc[("denoise", "dense"), "es_peak_width"] == 40
    shown = (out / "early_stop.md").read_text()
    assert "| sr4 | random ~89% | 89.3% | 2 | 27.50 ± 0.71 | 25.55 ± 0.64 |" in shown and "| 1/2 |" in shown


def test_the_reading_leads_the_report_with_gaps_verdicts_and_the_saving_per_imp_chain(report):
    rep, out = report
    text = (out / "index.md").read_text()
    assert text.splitlines()[2] == rep.reading == (out / "early_stop_reading.md").read_text().strip()
    # gaps: mean over the two tasks of the seed means; sr4 adds 1 dB, seed 1 adds 0.1 dB
    assert "dense 0.65 dB (peak width 40 it)" in rep.reading and "LIP ~89% 0.85 dB (peak width 46 it)" in rep.reading
    assert "random ~89% 1.45 dB" in rep.reading
    assert "LIP ~89% vs dense +0.20 dB: harder to stop early" in rep.reading
    assert "LIP ~89% vs random ~89% -0.60 dB: easier to stop early" in rep.reading
    # per IMP chain, levels 1-3: (40 + 30 + 20 - 15 seed) of 300; with level 0: (90 + 50 - 20 seed) of 400
    assert "would save" in rep.reading and "27.5% ± 2.9% of an IMP chain's iterations over its levels 1-3" in rep.reading
    assert "32.5% ± 2.9% over the whole chain with the dense level 0 (mean ± std over 4 chains" in rep.reading
    assert "arXiv 2112.06074" in rep.reading and "could not be verified" in rep.reading
    assert "last tenth of the budget" not in rep.reading  # every peak here comes before iteration 90 of 100


def test_the_gap_figure_has_a_panel_per_task_and_names_its_runs(report):
    rep, out = report
    image = Image.open(out / "early_stop_gap.png")
    assert image.size[0] > 1.5 * image.size[1]  # two panels side by side, the legend below
    sentence = next(s for title, s, _ in rep.sections if title == "Early stopping")
    assert "Drawn from 8 runs: denoise imp s0, denoise imp s1, denoise random s0" in sentence


def test_every_profile_crosses_the_tasks_with_the_four_subnetworks_under_a_detector():
    for profile in ("paper", "local", "smoke"):
        trials = load("fit_early_stop", profile).trials
        assert {t.early_stop for t in trials} == {"wmv"} and {t.method for t in trials} == {"imp", "random"}
        for t in trials:
            reached = t.sparsities[:t.levels] if t.sparsities else [1 - 0.8**n for n in range(1, t.levels + 1)]
            wanted = (0.5904, 0.8926) if t.method == "imp" else (0.8926,)
            assert all(min(abs(r - w) for r in reached) < 0.001 for w in wanted), (profile, t)
    assert {t.task for t in load("fit_early_stop", "paper").trials} == {"denoise", "inpaint", "sr4"}
    assert {t.es_window for t in load("fit_early_stop", "paper").trials} == {100}  # ES-WMV's W


def test_the_smoke_sweep_reports_what_a_replay_of_its_stored_traces_gives(tmp_path):
    """End to end: `lipsweep run fit_early_stop --profile smoke`; the table's ES PSNR of the dense denoising fit
    equals the detector replayed on the trace the store kept."""
    cmd = [sys.executable, "-m", "lipsweep.cli", "run", "fit_early_stop", "--profile", "smoke", "--store",
           str(tmp_path / "store"), "--tracking-uri", f"sqlite:///{tmp_path}/m.db", "--storage",
           str(tmp_path / "tune"), "--quiet"]
    done = subprocess.run(cmd, check=False, capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    table = pd.read_csv(next((tmp_path / "runs" / "analysis" / "fit_early_stop").glob("smoke-*/early_stop.csv")))
    assert len(table) == 10  # 2 tasks x (dense, LIP ~59%, LIP ~89%, random ~59%, random ~89%)
    reading = next(tmp_path.glob("runs/analysis/fit_early_stop/smoke-*/early_stop_reading.md")).read_text()
    late = (table["ema_peak_iter"] > 18).sum()  # 20 iterations: the outputs still improve at the end
    assert f"In {late} of 10 runs the oracle peak lies in the last tenth of the budget" in reading
    trial = load("fit_early_stop", "smoke").trials[0]
    for level in (tmp_path / "store" / "dense").iterdir():
        rec = json.loads((level / "level.json").read_text())
        task = json.loads((level / "config.json").read_text())["problem"]["task"]
        trace = json.loads((level / "es_trace.json").read_text())[0]
        replay = scores(trace, detect(trace, "wmv", trial.es_window, trial.es_patience), trial.iters)
        shown = table[(table["task"] == task) & (table["subnetwork"] == "dense")]
        assert shown["psnr_es"].iloc[0] == pytest.approx(round(replay["psnr_es"], 4), abs=1e-4) == rec["psnr_es"]


def test_a_run_that_never_fitted_the_image_is_named_not_read_as_easy_early_stopping():
    """A pruned run whose oracle peak lies more than 5 dB below the dense net's (same image, task, seed) has a
    flat curve: the reading names it instead of letting its tiny gap pass for easy early stopping."""
    from lipsweep.analysis.early_stop import collapsed_sentence

    data = pd.DataFrame({"image": ["a"] * 4, "task": ["denoise"] * 4, "seed": [0, 0, 1, 1],
                         "subnet": ["dense", "random ~89%", "dense", "random ~89%"],
                         "psnr_ema_peak": [28.0, 14.7, 28.1, 25.0]})
    text = collapsed_sentence(data)
    assert text.startswith(" 1 of 2 pruned runs never fitted the image") and "random ~89% denoise seed 0 (14.7 dB)" in text
    assert "seed 1" not in text and collapsed_sentence(data[data["seed"] == 1]) == ""
