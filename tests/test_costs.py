"""The cost model: the shipped calibration table, the model fitted to it, the wall-clock on N GPUs, and what
``lipsweep show`` prints from them."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest
import tomllib

from lipsweep.cli.main import main
from lipsweep.experiments.plan import (
    GPU_SPEEDUP,
    gpu_seconds_per_iter,
    plan,
    seconds_per_iter,
    trial_gpu_seconds,
    wall_clock,
)
from lipsweep.experiments.spec import load
from lipsweep.fitting import calibration
from lipsweep.lottery.store import TrunkStore

MODEL_TOLERANCE = 0.30  # the parametric model alone vs each measured entry, relative (28% on the shipped CPU table)
PREDICTION_TOLERANCE = 0.25  # rms error predicting each entry from the others (16% on the shipped CPU table)


def test_the_shipped_table_has_cpu_entries_measured_on_one_thread():
    table = json.loads(calibration.TABLE.read_text())
    cpu = table["devices"]["cpu"]
    assert cpu["threads"] == 1 and cpu["name"] and cpu["torch"] and cpu["measured"]
    assert len(cpu["entries"]) >= 8
    for e in cpu["entries"]:
        assert e["model"] == "dip" and e["pixels"] > 0 and e["width"] > 0 and e["it_s"] > 0
    assert {(e["width"], e["size"]) for e in cpu["entries"]} >= {(16, 64), (128, 256)}


def test_the_fitted_model_reproduces_every_measured_entry_and_predicts_each_from_the_others():
    table = json.loads(calibration.TABLE.read_text())
    for device, t in table["devices"].items():
        model = calibration.load()[device]
        for e in t["entries"]:
            assert model.seconds(e["pixels"], e["cost_width"]) * e["it_s"] == pytest.approx(1, rel=1e-9), e
            assert model.model(e["pixels"], e["cost_width"]) * e["it_s"] == pytest.approx(1, rel=MODEL_TOLERANCE), e
        loo = calibration.leave_one_out(t["entries"])
        rms = (sum(x * x for x in loo) / len(loo)) ** 0.5
        assert rms <= PREDICTION_TOLERANCE
        assert (t["model"]["model_error"], t["model"]["loo_rms_error"], t["model"]["loo_max_error"]) == pytest.approx(
            (model.model_error, rms, max(map(abs, loo))), abs=1e-4)  # the table says what the code computes


def test_the_fit_recovers_a_known_model_and_keeps_every_term_non_negative():
    a, p, c, b = 0.004, 5e-7, 3e-8, 2e-9
    entries = [{"pixels": px, "width": w, "it_s": 1 / (a + px * (p + c * w + b * w * w))}
               for px in (4096, 16384, 65536) for w in (16, 64, 128)]
    fitted = calibration.fit_device(entries)
    assert (fitted.a, fitted.p, fitted.c, fitted.b) == pytest.approx((a, p, c, b), rel=1e-6)
    assert fitted.model_error < 1e-9
    pure = calibration.fit_device([{**e, "it_s": 1 / (b * e["pixels"] * e["width"] ** 2)} for e in entries])
    assert min(pure.a, pure.p, pure.c) >= 0 and pure.b == pytest.approx(b, rel=1e-6)


def test_the_correction_is_the_entries_own_and_fades_beyond_their_neighbours():
    entries = [{"pixels": px * px, "width": w, "it_s": 1 / (1e-9 * px * px * w * w * f)}
               for px, w, f in ((64, 16, 1.0), (128, 16, 1.0), (64, 32, 1.0), (128, 32, 1.5))]
    fitted = calibration.fit_device(entries)
    for e in entries:
        assert fitted.seconds(e["pixels"], e["width"]) == pytest.approx(1 / e["it_s"])
    far = (2048 * 2048, 512)
    assert fitted.seconds(*far) == pytest.approx(fitted.model(*far))


@pytest.mark.parametrize("seconds, gpus, share, hours, limit", [
    ([4] * 5, 1, 0.25, 32, "waves"),  # 4 slots of 16 s each; the fifth trial runs after them
    ([100, 1, 1], 1, 0.25, 400, "longest trial"),  # a quarter of a GPU for 100 s of work
    ([10, 9, 8, 7, 6, 5], 1, 1, 45, "total work"),  # one at a time: the sum
    ([10] * 9, 2, 1, 50, "waves"),  # five waves on two GPUs
    ([10, 10, 0], 4, 2, 5, "total work"),  # two GPUs per trial: two slots at twice the speed; 0 s needs no slot
])
def test_wall_clock_takes_the_largest_of_work_longest_trial_and_waves(seconds, gpus, share, hours, limit):
    wc = wall_clock(seconds, gpus, share)
    assert (wc.hours * 3600, wc.limit) == (pytest.approx(hours), limit)
    assert wc.trials_per_gpu == 1 / (share if share >= 1 else 1 / round(1 / share))


def test_wall_clock_refuses_what_cannot_run():
    with pytest.raises(ValueError):
        wall_clock([1.0], 0, 0.25)
    with pytest.raises(ValueError):
        wall_clock([1.0], 1, 2)  # a two-GPU trial on one GPU
    assert wall_clock([0.0], 3, 0.25).hours == 0


def test_show_prints_the_wall_clock_for_the_gpus_asked(tmp_path, capsys):
    store = tmp_path / "store"
    assert main(["show", "rewind_ablation", "--profile", "paper", "--store", str(store), "--gpus", "10", "64"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    exp = load("rewind_ablation", "paper")
    per_trial = [trial_gpu_seconds(p) for p in plan(exp, TrunkStore(store))]
    ten, many = (wall_clock(per_trial, n, 0.25) for n in (10, 64))
    assert out[-1] == (f"wall-clock from the GPU hours, at 4 trials per GPU: 10 GPUs ~{ten.hours:.1f} hours ({ten.limit}); "
                       f"64 GPUs ~{many.hours:.1f} hours ({many.limit})")
    assert f"~{sum(per_trial) / 3600:.2f} GPU hours" in out[-2]
    assert main(["show", "rewind_ablation", "--profile", "paper", "--store", str(store), "--gpus", "10", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert [w["gpus"] for w in info["wall_clock"]] == [10] and info["wall_clock"][0]["hours"] == ten.hours


def test_without_gpu_measurements_show_says_the_speedup_is_assumed_and_names_the_benchmark(tmp_path, capsys,
                                                                                          monkeypatch):
    table = json.loads(calibration.TABLE.read_text())
    path = tmp_path / "calibration.json"  # the CPU part only, whatever the shipped table holds
    path.write_text(json.dumps({"devices": {"cpu": table["devices"]["cpu"]}}))
    monkeypatch.setattr(calibration, "TABLE", path)
    assert main(["show", "rewind_ablation", "--profile", "paper", "--store", str(tmp_path / "s")]) == 0
    gpu_line = capsys.readouterr().out.strip().splitlines()[-2]
    assert f"assuming a GPU = {GPU_SPEEDUP:.0f} CPU threads, not measured" in gpu_line
    assert "python benchmarks/calibrate.py --devices cuda --merge" in gpu_line


def test_gpu_hours_follow_the_cuda_entries_when_the_table_has_them(tmp_path, capsys, monkeypatch):
    table = json.loads(calibration.TABLE.read_text())
    cuda = {**table["devices"]["cpu"], "name": "Test GPU", "threads": None,
            "entries": [{**e, "it_s": e["it_s"] * 100} for e in table["devices"]["cpu"]["entries"]]}
    path = tmp_path / "calibration.json"
    path.write_text(json.dumps({"devices": {**table["devices"], "cuda": cuda}}))
    monkeypatch.setattr(calibration, "TABLE", path)
    assert main(["show", "rewind_ablation", "--profile", "paper", "--store", str(tmp_path / "s"), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["gpu_basis"]["measured"] and info["gpu_basis"]["device"] == "Test GPU"
    assert info["gpu_hours"] == pytest.approx(info["cpu_core_hours"] / 100, rel=1e-6)
    chain = load("rewind_ablation", "paper").trials[0].chain()
    cpu = seconds_per_iter(chain, {})
    assert gpu_seconds_per_iter(chain, {}) == pytest.approx(cpu / 100)
    assert gpu_seconds_per_iter(chain, {chain.dense_key: 2 * cpu}) == pytest.approx(cpu / 50)  # timed 2x slower


def test_the_wheel_ships_the_table():
    package_data = tomllib.loads((calibration.TABLE.parents[2] / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert "data/*.json" in package_data["package-data"]["lipsweep"]


def test_the_calibration_module_imports_no_torch():
    code = "import sys, lipsweep.fitting.calibration as c; c.load(); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_show_prices_dip_steps_from_the_table():
    """The CPU estimate is the table's model at the trial's pixels and width: one thread of the measured CPU."""
    cpu = calibration.load()["cpu"]
    exp = load("rewind_ablation", "paper")
    first = plan(exp, TrunkStore("/nonexistent-store"))[0]
    per_iter = first.seconds / (first.fits_needed * first.iters)
    assert per_iter == pytest.approx(cpu.seconds(512 * 512, 128), rel=1e-9)
    assert re.fullmatch(r"\d{4}-\d\d-\d\d", cpu.measured)
