"""Nothing a user has changes when the code is reorganised (issue 25): for every shipped experiment x
profile, a digest of each trial's key, Tune spec (``compact``), found key, dense and chain keys, the fits
``show`` counts on an empty store, and the MLflow params, pinned at main before the move (edc74c1).

The one allowed difference is named here: a kind logs only the fields it reads (issue 25), so GAN runs no
longer show the DIP fields they never read and evaluation runs no longer show ``stop_*``. ``DROPPED`` lists
exactly those, with the values they were logged at; adding them back must give the pinned params digest.
Re-pin only for a deliberate change of keys: ``LIPSWEEP_REPIN=1 pytest tests/test_golden.py``.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

from lipsweep.experiments import experiment_names, load
from lipsweep.plan import plan
from lipsweep.store import TrunkStore
from lipsweep.trial import KINDS

PINS = Path(__file__).parent / "pins" / "golden.json"
PROFILES = ("paper", "local", "smoke")
DIP_FIELDS = {"width": 128, "depth": 5, "param_noise": 0.0, "rewind_budget": "full", "shared_z": True,
              "synflow_rounds": 100, "stop_tolerance": 0.0, "stop_keep_going": False}
DROPPED: dict[str, dict[str, object]] = {"gan": DIP_FIELDS, "evaluation": {"stop_tolerance": 0.0,
                                                                         "stop_keep_going": False}}


def digest(obj: object) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def old_params(trial) -> dict:
    """The params as main logged them before issue 25: today's plus the fields named in ``DROPPED``."""
    return {**DROPPED.get(trial.kind, {}), **trial.params()}


def digests(name: str, profile: str, store: TrunkStore) -> dict:
    exp = load(name, profile)
    rows = []
    for t in exp.trials:
        kind = KINDS.get(t.kind)
        found, on = kind.chains(t)
        rows.append({"key": t.key, "compact": t.compact(), "found": kind.found_key(t),
                     "chains": [[c.dense_key, c.chain_key] for c in (found, on) if c is not None]})
    return {"trials": len(rows), "keys": digest(rows),
            "fits": digest([[p.fits_needed, p.iters] for p in plan(exp, store)]),
            "params": digest([old_params(t) for t in exp.trials])}


def test_every_experiment_and_profile_keeps_its_keys_specs_fits_and_params(tmp_path):
    got = {f"{n}/{p}": digests(n, p, TrunkStore(tmp_path / "store")) for n in experiment_names() for p in PROFILES}
    if os.environ.get("LIPSWEEP_REPIN"):
        PINS.write_text(json.dumps(got, indent=1, sort_keys=True) + "\n")
    pinned = json.loads(PINS.read_text())
    assert len(got) == 54 and set(got) == set(pinned)
    assert {k: v for k, v in got.items() if v != pinned[k]} == {}


@pytest.mark.parametrize("kind,name", [("gan", "gan_lip"), ("evaluation", "transfer_tasks")])
def test_the_dropped_params_are_exactly_the_fields_the_kind_does_not_read(kind, name):
    trial = next(t for t in load(name, "smoke").trials if t.kind == kind)
    assert not set(DROPPED[kind]) & set(trial.params())
