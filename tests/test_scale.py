"""The scale path at small N (issue 16): 100 trivial trials through a local Ray and a real ``mlflow server``
(artifacts proxied, the driver's pool of logging threads), run by ``benchmarks/scale.py`` as a user would.
Its timings are the benchmark's to report; here only what must hold at any speed: every trial finished, one
run each, each level logged exactly once, and the driver's memory bounded."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.cluster
def test_a_hundred_trials_each_get_one_run_with_each_level_once(tmp_path):
    out = tmp_path / "scale.json"
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "scale.py"), "--trials", "100",
                           "--out", str(out)], capture_output=True, text=True, timeout=900, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    row, = json.loads(out.read_text())["rows"]
    assert row["store"] == "server, artifacts proxied"
    assert (row["trials"], row["finished"], row["exactly_once"]) == (100, 100, 100)
    assert row["first_trial_s"] > 0 and row["trials_per_min"] > 0
    assert row["driver_peak_mb"] < 1500, row  # a driver that kept every level's payload would grow past this
