"""Issue 29, item 5: ``lipsweep show`` prices a sweep with early stopping from the detections the store measured.

A real store of two tiny real chains with ES-WMV (one run with ``es_stop``), read back by ``measured_stops``, priced
by ``plan`` and printed by ``lipsweep show`` on an experiment file."""

from __future__ import annotations

import json
import shutil

import pytest

from lipsweep.core.paths import RECORD
from lipsweep.experiments.plan import plan, summary, trial_gpu_seconds
from lipsweep.experiments.spec import load
from lipsweep.kinds.base import TrialConfig
from lipsweep.lottery.cost import MeasuredStops, chain_stop_group, measured_stops, stop_of
from lipsweep.lottery.store import TrunkStore
from lipsweep.lottery.tickets import Tickets

FIT = dict(image="Set5/baby", task="denoise", size=32, depth=3, width=8, iters=100, early_stop="wmv", es_window=25,
           es_patience=3, levels=1)  # patience 3: WMV confirms within the 100 iterations on most of these fits
SPEC = ("name: es_priced\ndescription: d\npaper: p\nkind: chain\nmetric: psnr_ema\n"
        "base: {image: Set5/baby, task: denoise, size: 32, depth: 3, iters: 100, early_stop: wmv, es_window: 25, "
        "es_patience: 3, levels: 1, seed: 7}\n"
        "axes: {width: [8, 16]}\nresources: {cpu: 1, gpu: 0.5}\nprofiles: {paper: {}, local: {}, smoke: {}}\n")


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """Seed 0 runs its budget (es_stop false), seed 1 ends at its confirmed detection: four level records."""
    root = tmp_path_factory.mktemp("es_store")
    tickets = Tickets(TrunkStore(root))
    for seed, es_stop in ((0, False), (1, True)):
        tickets.chain(TrialConfig(**FIT, seed=seed, es_stop=es_stop).typed.chain, 1)
    return root


@pytest.fixture()
def spec(tmp_path):
    path = tmp_path / "es_priced.yaml"
    path.write_text(SPEC)
    return str(path)


def _by_hand(root) -> list[dict]:
    files = (*root.glob(f"dense/*/{RECORD}"), *root.glob(f"chains/*/level_*/{RECORD}"))
    return [json.loads(p.read_text()) for p in files]


def test_measured_stops_is_the_mean_of_the_stored_fits_run_over_their_budget(store):
    records = _by_hand(store)
    assert len(records) == 4 and all(r["es_iters_run"] + r["es_saved"] == 100 for r in records)
    fraction = sum(r["es_iters_run"] / 100 for r in records) / 4
    group = chain_stop_group(TrialConfig(**FIT).typed.chain)
    found = measured_stops(TrunkStore(store))
    assert list(found) == [group] and "wmv window 25 patience 3" in group  # es_stop is not part of the group
    assert found[group].fits == 4 and found[group].confirmed == sum(r["es_confirmed"] == 1 for r in records)
    assert found[group].fraction == pytest.approx(fraction, abs=1e-12) and fraction < 1


def test_evaluations_count_by_their_target_and_a_damaged_record_is_skipped_in_place(store, tmp_path):
    """An evaluation's config names its target's dense payload (``lottery/transfer.py``); a level.json that does
    not parse is left out and left where it is (``show`` only reads)."""
    root = tmp_path / "copy"
    shutil.copytree(store, root)
    dense = sorted(root.glob(f"dense/*/{RECORD}"))[0].parent
    evaluation = root / "evals" / "e0"
    evaluation.mkdir(parents=True)
    shutil.copy(dense / RECORD, evaluation / RECORD)
    target = json.loads((dense / "config.json").read_text())
    (evaluation / "config.json").write_text(json.dumps({"mask": "m", "target": target, "rewind": 0.0}))
    damaged = sorted(root.glob(f"chains/*/level_1/{RECORD}"))[0]
    lost = json.loads(damaged.read_text())
    damaged.write_text("{not json")
    records = [*_by_hand(store), json.loads((dense / RECORD).read_text())]
    records.remove(lost)
    (found,) = measured_stops(TrunkStore(root)).values()
    assert found.fits == 4 and damaged.read_text() == "{not json"
    assert found.fraction == pytest.approx(sum(r["es_iters_run"] / 100 for r in records) / 4, abs=1e-12)


def test_a_fit_of_several_images_ends_when_every_detector_has_confirmed():
    both = {"per_image": [{"es_iters_run": 30, "es_saved": 70, "es_confirmed": 1.0},
                          {"es_iters_run": 60, "es_saved": 40, "es_confirmed": 1.0}]}
    assert stop_of(both) == (0.6, True)
    one = {"per_image": [both["per_image"][0], {"es_iters_run": 100, "es_saved": 0, "es_confirmed": 0.0}]}
    assert stop_of(one) == (1.0, False)
    assert stop_of({"es_iters_run": 25, "es_saved": 75, "es_confirmed": 1}) == (0.25, True)


def test_plan_prices_es_stop_fits_at_their_groups_measured_fraction(store, spec):
    fraction = measured_stops(TrunkStore(store))[chain_stop_group(TrialConfig(**FIT).typed.chain)].fraction
    assert fraction < 1  # else every price below would read the same with es_stop on or off
    on = plan(load(spec, "local", {"es_stop": True}), TrunkStore(store))
    off = plan(load(spec, "local", {}), TrunkStore(store))
    assert [p.fits_needed for p in on] == [p.fits_needed for p in off] == [2, 2]  # seed 7: dense + level 1
    assert on[0].seconds / off[0].seconds == pytest.approx(fraction, rel=1e-9)
    assert trial_gpu_seconds(on[0]) / trial_gpu_seconds(off[0]) == pytest.approx(fraction, rel=1e-9)
    assert (on[0].early_stop.measured, on[0].early_stop.full, on[0].early_stop.es_stop) == (2, 0, True)
    assert on[1].seconds == off[1].seconds and (on[1].early_stop.measured, on[1].early_stop.full) == (0, 2)  # width 16
    assert off[0].early_stop.seconds == pytest.approx(on[0].seconds, rel=1e-12) and not off[0].early_stop.es_stop
    es = summary(load(spec, "local", {}), off)["early_stopping"]
    part = es["es_stop_off"]
    assert es["es_stop_on"] is None
    assert (part["fits"], part["measured"], part["full"], part["run_again"]) == (4, 2, 2, 0)
    assert part["cpu_core_hours"] == pytest.approx((on[0].seconds + on[1].seconds) / 3600, rel=1e-12)
    assert part["cpu_core_hours_full_budget"] == pytest.approx((off[0].seconds + off[1].seconds) / 3600, rel=1e-12)
    assert part["groups"] == {chain_stop_group(TrialConfig(**FIT).typed.chain):
                              MeasuredStops(fraction, 4, part["stored_confirmed"]).__dict__}


def test_switching_es_stop_on_refits_what_the_store_holds_without_it(store, spec):
    """Seed 0's width-8 chain is stored with es_stop false: as set it needs nothing, with es_stop on it runs again
    (es_stop is part of a fit's key), priced at its group's measured fraction."""
    exp = load(spec, "local", {"seed": 0})
    plans = plan(exp, TrunkStore(store))
    assert [p.fits_needed for p in plans] == [0, 2] and plans[0].seconds == 0
    part = summary(exp, plans)["early_stopping"]["es_stop_off"]
    assert (part["fits"], part["measured"], part["run_again"]) == (4, 2, 2) and plans[0].early_stop.seconds > 0


def test_no_detector_no_early_stopping_in_the_plan(store, spec):
    plans = plan(load(spec, "local", {"early_stop": "none", "es_window": None, "es_patience": None}), TrunkStore(store))
    assert all(p.early_stop is None for p in plans)
    assert summary(load(spec, "local", {}), plans)["early_stopping"] is None


def test_show_says_how_early_stopping_was_priced(store, spec, capsys):
    from lipsweep.cli.main import main

    found = measured_stops(TrunkStore(store))
    (m,) = found.values()
    measured = f"mean {100 * m.fraction:.0f}% of the budget, 4 stored fits, {m.confirmed} confirmed"
    assert main(["show", spec, "--store", str(store), "--set", "es_stop=true"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert (f"early stopping: es_stop on; 2 of 4 fits priced at their measured detection ({measured}); 2 at the full "
            "budget (no stored fit of their kind)") in out
    assert main(["show", spec, "--store", str(store), "--json"]) == 0
    off = json.loads(capsys.readouterr().out)["early_stopping"]["es_stop_off"]
    hours, full = off["cpu_core_hours"], off["cpu_core_hours_full_budget"]
    assert main(["show", spec, "--store", str(store)]) == 0
    line = (f"early stopping: with es_stop: true this sweep's 4 fits would take {hours:.3g} core-hours instead of "
            f"{full:.3g} at their full budget, {100 * (1 - hours / full):.0f}% less (measured: {measured}; 2 of 4 fits "
            "at the full budget, no stored fit of their kind)")
    assert line in capsys.readouterr().out.splitlines() and hours < full
    no_detector = ["early_stop=none", "es_window=null", "es_patience=null"]
    assert main(["show", spec, "--store", str(store), "--set", *no_detector]) == 0
    assert "early stopping" not in capsys.readouterr().out
