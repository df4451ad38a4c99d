"""The protocol sections of the reports (issue 27): rewinding's gain per arm, paired by seed and level, and
SynFlow's loss next to the skip-cut control, on hand-made frames with known answers."""

import pandas as pd
import pytest

from lipsweep.analysis.inputs import Inputs, Recipe, Report
from lipsweep.analysis.protocols import rewind_gains, with_arms, write_rewind_protocol, write_synflow_mechanism


def _rewind_frame() -> pd.DataFrame:
    rows = []
    for seed in (0, 1):
        for level in (1, 2):
            base = 20.0 + seed - level
            rows.append({"seed": seed, "level": level, "rewind": 0.0, "psnr_ema": base})
            rows.append({"seed": seed, "level": level, "rewind": 0.1, "psnr_ema": base + 0.5})
            if seed == 1:  # seed 0's theta_j: 0.3 dB worse than rewinding to its own
                rows.append({"seed": seed, "level": level, "rewind": 0.1, "psnr_ema": base + 0.2,
                             "rewind_source": "shared"})
    return pd.DataFrame(rows)


def test_rewind_gains_pair_each_arm_with_its_rewind_0_chain():
    gains = rewind_gains(with_arms(_rewind_frame()), "psnr_ema").set_index("rewind_source")
    assert gains.loc["own", "gain_db"] == pytest.approx(0.5) and gains.loc["own", "pairs"] == 4
    assert gains.loc["shared", "gain_db"] == pytest.approx(0.2) and gains.loc["shared", "pairs"] == 2


def test_the_rewind_section_states_both_protocols(tmp_path):
    frame = _rewind_frame()
    rep = Report(tmp_path)
    write_rewind_protocol(Inputs(rep, None, frame, frame, Recipe(), "rewind_ablation", "psnr_ema", 0.89))
    (title, sentence, files), = rep.sections
    assert "+0.50 dB" in sentence and "+0.20 dB" in sentence and "Fig. 9" in sentence
    assert "| 0.5 |" in files[0].read_text().replace("0.50", "0.5")


def test_the_synflow_section_reports_the_control_against_dense(tmp_path):
    frame = pd.DataFrame([
        {"method": "imp", "level": 0, "sparsity": 0.0, "psnr_ema": 28.0},
        {"method": "imp", "level": 1, "sparsity": 0.2, "psnr_ema": 28.0},
        {"method": "synflow", "level": 1, "sparsity": 0.2, "psnr_ema": 24.5},
        {"method": "skip_cut", "level": 1, "sparsity": 0.07, "psnr_ema": 24.0},
    ])
    rep = Report(tmp_path)
    write_synflow_mechanism(Inputs(rep, None, frame, frame, Recipe(), "synflow", "psnr_ema", 0.89))
    (title, sentence, files), = rep.sections
    assert "SynFlow - IMP = -3.50 dB" in sentence
    assert "-4.00 dB against dense" in sentence
    assert "skip_cut (control)" in files[0].read_text()
