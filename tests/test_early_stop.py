"""Early stopping without the clean image (issue 29): the detectors find a known peak, a stopped fit runs fewer
iterations and records the saving, replaying the stored trace gives the online detection exactly, and bad
settings are refused in one line before any fit."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from dataclasses import replace
from types import SimpleNamespace

import pytest
import torch

from lipsweep.core.errors import ConfigError
from lipsweep.core.paths import ES_TRACE, IMAGES
from lipsweep.fitting.early_stop import TRACE_ALPHAS, TRACE_WINDOWS, Trace, Watch, detect, scores
from lipsweep.fitting.fit import run
from lipsweep.fitting.outputs import SharedDetection
from lipsweep.kinds.base import TrialConfig
from lipsweep.lottery.store import TrunkStore
from lipsweep.lottery.tickets import Tickets

PEAK = 300


def synthetic_trace(iters: int = 800, window: int = 50) -> dict[str, list[float]]:
    """Outputs whose step-to-step jitter shrinks until ``PEAK`` and grows after it (DIP fitting the image,
    then the noise), with the reported PSNR peaking there: the shape ES-WMV is built on."""
    gen = torch.Generator().manual_seed(0)
    base = torch.rand(1, 3, 16, 16, generator=gen)
    trace = Trace((*TRACE_WINDOWS, window), TRACE_ALPHAS)
    for it in range(1, iters + 1):
        amplitude = 0.02 + abs(it - PEAK) / PEAK * 0.2
        out = base + amplitude * torch.randn(base.shape, generator=gen)
        trace.add(it, out, 30.0 - abs(it - PEAK) / 50.0, None)
    return trace.as_dict()


@pytest.mark.parametrize("window", [25, 50, 100])
def test_a_known_peak_is_detected_within_the_window(window):
    trace = synthetic_trace(window=window)
    found = detect(trace, "wmv", window, patience=150)
    got = scores(trace, found, 800)
    assert found.confirmed_at is not None
    assert abs(got["es_iter"] - PEAK) <= window, got  # the trailing window's minimum lies at most W past the peak
    assert got["es_gap"] == pytest.approx(abs(got["es_iter"] - PEAK) / 50.0)
    assert got["es_iters_run"] == trace["it"][found.confirmed_at] and got["es_saved"] == 800 - got["es_iters_run"]
    assert got["es_iters_run"] - got["es_iter"] == 150  # confirmed after exactly `patience` checks
    lagged = scores(trace, found, 800, lag=40)  # es_lag: the output 40 after the minimum, the same stop
    assert lagged["es_iter"] == got["es_iter"] + 40 and lagged["es_iters_run"] == got["es_iters_run"]
    emv = scores(trace, detect(trace, "emv", window, 150, 0.1), 800)
    assert abs(emv["es_iter"] - PEAK) <= 2 * window, emv


def test_the_window_variance_is_the_reference_formula():
    """VAR_W(t) = (1/W) sum ||x_w - mean||^2 / N over the last W outputs (ES_WMV.ipynb), NaN until W are in."""
    gen = torch.Generator().manual_seed(1)
    outs = [torch.rand(1, 3, 4, 4, generator=gen) for _ in range(30)]
    trace = Trace((5,), (0.1,))
    for i, x in enumerate(outs):
        trace.add(i + 1, x, 20.0, None)
    col = trace.as_dict()["wmv_5"]
    assert all(math.isnan(v) for v in col[:4])
    window = torch.stack([x.reshape(-1).double() for x in outs[10:15]])
    expected = float(((window - window.mean(0)) ** 2).sum(1).mean() / window.shape[1])
    assert col[14] == pytest.approx(expected, rel=1e-12)


def test_a_minimum_must_be_strictly_lower_and_the_choice_freezes():
    watch = Watch(patience=2, first=1)
    for i, v in enumerate([3.0, 1.0, 1.0, 2.0, 0.5, 0.1]):
        watch.add(i, v)
    assert (watch.index, watch.confirmed_at) == (1, 3)  # the tie at 2 keeps 1; later minima come too late


def _fit(**fields):
    cfg = TrialConfig(**{"image": "Set5/baby", "task": "denoise", "size": 32, "width": 8, "depth": 3, "iters": 300,
                         "early_stop": "wmv", "es_window": 25, "es_patience": 40, **fields}).chain().run
    return run(cfg)[0]


def test_es_stop_runs_fewer_iterations_and_records_the_saving():
    full, stopped = _fit(), _fit(es_stop=True)
    f, s = full.metrics, stopped.metrics
    assert f["es_confirmed"] == 1 and f["iters"] == 300
    assert s["iters"] == f["es_iters_run"] < 300 and s["es_saved"] == 300 - s["iters"] > 0
    assert stopped.curve[-1]["iter"] == s["iters"]
    for key in ("es_iter", "psnr_es", "es_iters_run", "es_saved", "ssim_es"):  # the same trajectory
        assert s[key] == f[key], key
    assert s["es_gap"] <= f["es_gap"]  # a stopped fit's oracle sees only the iterations it ran: es_stop false compares
    assert (stopped.extra["es_image"] == full.extra["es_image"]).all()


@pytest.mark.parametrize(("detector", "lag"), [("wmv", 0), ("emv", 0), ("wmv", 30)])
def test_replaying_the_trace_gives_the_online_detection(detector, lag):
    result = _fit(early_stop=detector, es_lag=lag)
    trace = json.loads(json.dumps(result.extra["es_trace"]))  # as stored
    found = detect(trace, detector, 25, 40, 0.1)
    replayed = scores(trace, found, 300, lag)
    assert replayed == {k: result.metrics[k] for k in replayed}
    assert replayed["es_iter"] == trace["it"][min(found.index + lag, found.confirmed_at or 299)]
    assert len(trace["it"]) == 300 and set(trace) >= {f"wmv_{w}" for w in TRACE_WINDOWS}


def test_a_chain_level_stores_its_trace_and_reconstruction(tmp_path):
    """Every level of an IMP chain with a detector: es_* in its record, es.png and es_trace.json beside the
    curve; the stored trace replays to the record (deep decoder and SGLD fits too)."""
    cfg = TrialConfig(image="Set5/baby", task="inpaint", size=32, width=8, depth=3, iters=120, early_stop="wmv",
                      es_window=25, es_patience=30, levels=1)
    records = Tickets(TrunkStore(tmp_path)).chain(cfg.typed.chain, 1).records
    for rec in records:
        where = tmp_path / rec.where
        trace = json.loads((where / ES_TRACE).read_text())[0]
        assert (where / IMAGES["early_stop"]).is_file()
        replayed = scores(trace, detect(trace, "wmv", 25, 30), 120)
        assert replayed == {k: rec.metrics[k] for k in replayed}
    for fields in ({"model": "deep_decoder", "width": 16, "size": 64, "depth": 5}, {"param_noise": 2.0}):
        m = run(TrialConfig(**{"image": "Set5/baby", "task": "denoise", "size": 32, "depth": 3, "iters": 60,
                               "early_stop": "emv", "es_window": 10, "es_patience": 20, "width": 8,
                               **fields}).chain().run)[0].metrics
        assert 1 <= m["es_iter"] <= 60 and m["es_gap"] >= 0


def test_a_detector_enters_the_key_only_when_set():
    plain = TrialConfig(image="Set5/baby", size=32, width=8, depth=3, iters=100)
    assert TrialConfig(image="Set5/baby", size=32, width=8, depth=3, iters=100, early_stop="none").key == plain.key
    assert TrialConfig(image="Set5/baby", size=32, width=8, depth=3, iters=100, early_stop="wmv").key != plain.key
    resolved = TrialConfig(image="Set5/baby", size=32, width=8, depth=3, iters=500, early_stop="wmv").chain().run.fit
    assert (resolved.es_window, resolved.es_patience) == (50, 100)


@pytest.mark.parametrize(("fields", "field", "words"), [
    ({"early_stop": "wmv", "es_window": 0}, "es_window", "positive integer"),
    ({"early_stop": "wmv", "es_patience": 101}, "es_patience", "allowed: 1..100"),
    ({"early_stop": "wmv", "es_window": 101}, "es_window", "allowed: 1..100"),
    ({"early_stop": "variance"}, "early_stop", "allowed: wmv, emv"),
    ({"early_stop": "wmv", "task": "fit"}, "early_stop", "no peak"),
    ({"es_stop": True}, "es_stop", "needs a detector"),
    ({"es_patience": 10}, "es_patience", "applies only with a detector"),
    ({"early_stop": "wmv", "es_patience": 20, "es_lag": 21}, "es_lag", "allowed: 0..20"),
    ({"es_lag": 5}, "es_lag", "applies only with a detector"),
])
def test_bad_detector_settings_are_refused_naming_the_field(fields, field, words):
    with pytest.raises(ConfigError) as err:
        TrialConfig(**{"image": "Set5/baby", "size": 32, "width": 8, "depth": 3, "iters": 100, **fields})
    assert err.value.field == field and words in err.value.message


def test_the_cli_refuses_before_any_trial_in_one_line(tmp_path):
    """``--set`` on a sweep: exit 2, one line naming the field, nothing started or recorded."""
    cmd = [sys.executable, "-m", "lipsweep.cli", "run", "imp_early_stop", "--profile", "smoke", "--set",
           "early_stop=wmv", "--set", "es_patience=999", "--store", str(tmp_path / "s"), "--tracking-uri",
           f"sqlite:///{tmp_path}/m.db", "--quiet"]
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 2 and "es_patience: 999 is above the fit's 20 iterations" in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1 and not (tmp_path / "m.db").exists()


def test_imp_under_early_stopping_prunes_the_weights_at_the_detection(tmp_path):
    """``es_mask``: level 1's mask ranks the dense fit's weights at its detected iteration (stored as
    detected.pt), not its final ones; each level's successor likewise; without a detector it is refused."""
    from lipsweep.pruning.masks import MaskSet
    from lipsweep.pruning.methods import METHODS, level_counts, prunable_total

    fields = {"image": "Set5/baby", "task": "denoise", "size": 32, "width": 8, "depth": 3, "iters": 200,
              "early_stop": "wmv", "es_window": 25, "es_patience": 30, "levels": 2}
    tickets = Tickets(TrunkStore(tmp_path))
    plain, under = (TrialConfig(**fields, es_mask=flag).typed.chain for flag in (False, True))
    assert plain.dense_key == under.dense_key and plain.chain_key != under.chain_key
    kept = [r.mask_hash for r in tickets.chain(plain, 2).records]
    detected = [r.mask_hash for r in tickets.chain(under, 2).records]
    assert kept[0] == detected[0] and kept[1:] != detected[1:]
    trunk = tickets.context(under)
    dense_mask = MaskSet.dense(trunk.model(trunk.theta0))
    state = torch.load(tmp_path / "dense" / under.dense_key / "detected.pt", weights_only=True)
    keep = level_counts(prunable_total(dense_mask, ()), 1, 0.2)[1]
    level1 = MaskSet(METHODS.get("imp").successor(trunk.model(state), dense_mask, keep, ()))
    assert level1.hash == detected[1]
    with pytest.raises(ConfigError) as err:
        TrialConfig(**{**fields, "early_stop": "none", "es_window": None, "es_patience": None}, es_mask=True)
    assert err.value.field == "es_mask" and "needs a detector" in err.value.message


def test_one_network_fitting_several_images_takes_one_detection_on_their_mean_statistic():
    """``es_mask`` under Algorithm 2: one network fits both images, so one set of weights is returned: those at
    the detection on the mean of the images' statistics, replayed from their stored traces (lag included),
    not either image's own; with one image, exactly that image's ``es_iter``."""
    from lipsweep.fitting.early_stop import returned
    from lipsweep.fitting.fit import fit_many, prepare

    cfg = TrialConfig(image="Set5/baby", task="denoise", size=32, width=8, depth=3, iters=300, early_stop="wmv",
                      es_window=25, es_patience=40, es_lag=10).chain().run
    one, other = prepare(cfg), prepare(replace(cfg, problem=replace(cfg.problem, image="Set5/bird")))
    both = fit_many(one.model, [one.z], [one.problem, other.problem], cfg.fit, keep_detected=True)
    traces = [json.loads(json.dumps(r.extra["es_trace"])) for r in both]  # as stored
    mean = [(a + b) / 2 for a, b in zip(traces[0]["wmv_25"], traces[1]["wmv_25"], strict=True)]
    found = detect({"wmv_25": mean}, "wmv", 25, 40)
    shared = traces[0]["it"][returned(found, 10, 299)]
    assert found.index is not None and both[0].extra["detected_iter"] == shared
    alone = fit_many(prepare(cfg).model, [one.z], [one.problem], cfg.fit, keep_detected=True)[0]
    assert alone.extra["detected_iter"] == alone.metrics["es_iter"]
    # where the images' own minima differ (here at outputs 10 and 30), the mean's lies between them (20)
    statistics = [[(i - 10) ** 2 + 1.0 for i in range(80)], [(i - 30) ** 2 + 1.0 for i in range(80)]]
    early = [SimpleNamespace(trace=SimpleNamespace(columns={"s": []}), column="s") for _ in statistics]
    detection = SharedDetection(early, SimpleNamespace(es_patience=20, es_window=5, es_lag=3))
    for i in range(80):
        for e, values in zip(early, statistics, strict=True):
            e.trace.columns["s"].append(values[i])
        detection.add(100 + i)
    assert detection.watch.index == 20 and detection.chosen_at == 123


def test_lipsweep_fit_with_a_detector_prints_what_it_returned(tmp_path):
    """``lipsweep fit --early-stop wmv``: psnr_es, es_iter and es_gap on the console, as metrics.json has them,
    with es.png and the trace beside the other outputs."""
    cmd = [sys.executable, "-m", "lipsweep.cli", "fit", "--image", "Set5/baby", "--task", "denoise", "--size", "32",
           "--depth", "3", "--width", "8", "--iters", "200", "--early-stop", "wmv", "--es-window", "25",
           "--es-patience", "40", "--quiet", "--out", str(tmp_path / "fit")]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    m = json.loads((tmp_path / "fit" / "metrics.json").read_text())
    line = out.strip().splitlines()[-1]
    assert line.startswith("early stop (wmv, window 25, patience 40): ")
    assert (f"psnr_es {m['psnr_es']:.2f} at es_iter {m['es_iter']}" in line
            and f"es_gap {m['es_gap']:.2f} dB" in line and f"ema peak {m['psnr_ema_peak']:.2f}" in line)
    trace = json.loads((tmp_path / "fit" / ES_TRACE).read_text())[0]
    assert scores(trace, detect(trace, "wmv", 25, 40), 200)["es_iter"] == m["es_iter"]
    assert (tmp_path / "fit" / IMAGES["early_stop"]).is_file()
