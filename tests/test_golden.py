"""Nothing a user has changes when the code is reorganised (issue 25): for every shipped experiment x
profile, a digest of each trial's key, Tune spec (``compact``), found key, dense and chain keys, the fits
``show`` counts on an empty store, and the MLflow params, pinned at main before the move (edc74c1).

The one allowed difference is named here: a kind logs only the fields it reads (issue 25), so GAN runs no
longer show the DIP fields they never read, and evaluation and classification runs no longer show ``stop_*``
(nor ``at_levels``, and ``classify`` not the DIP platform fields). ``DROPPED`` lists exactly those, with the
values they were logged at; adding them back must give the pinned params digest. (Classification runs gained
``data``, the report's facet, in issue 24, before this pin.)
Issue 27 added fields (``ADDED``: logged at their defaults, the same trials) and arms to six experiments'
local and paper profiles (re-pinned then; every other entry kept its digest).
Re-pin only for a deliberate change of keys: ``LIPSWEEP_REPIN=1 pytest tests/test_golden.py``.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

from lipsweep.experiments.plan import plan
from lipsweep.experiments.spec import experiment_names, load
from lipsweep.kinds.base import KINDS
from lipsweep.lottery.store import TrunkStore

PINS = Path(__file__).parent / "golden.json"
PROFILES = ("paper", "local", "smoke")
STOP = {"stop_k": "off", "stop_tolerance": 0.0, "stop_keep_going": False}
# What each kind logged before although it never read it (issue 25), with the values it was logged at. The
# GAN kind read none of the DIP fields; eight of them (width ... stop_keep_going) were even accepted at other
# values and keyed; evaluation and classification runs logged a stop rule they never apply.
DROPPED: dict[str, dict[str, object]] = {
    "gan": {"width": 128, "depth": 5, "ema": "off", "param_noise": 0.0, "rewind": 0.0, "rewind_budget": "full",
            "sparsities": (), "imp_target": "observation", "keep_input_convs": False, "multi_images": (),
            "shared_z": True, "synflow_rounds": 100, "target": "image", "channels": 3, "snapshots": (),
            "burnin": "off", "sample_every": 50, "at_levels": (), "source_multi_images": (), "device": "auto",
            "deterministic": False, "platform_key": False, **STOP},
    "evaluation": STOP,
    "classify": {"at_levels": (), "deterministic": False, "platform_key": False, **STOP},
    "classify_transfer": {"at_levels": (), **STOP},
}


# Fields added by issues 27 and 29, logged by the kinds that read them; at these defaults a trial is what it was.
ADDED = {"rewind_source": "own", "gan_eval": "pretrained", "classify_recipe": "lth", "early_stop": "none",
         "es_alpha": 0.1, "es_stop": False, "es_mask": False, "es_lag": 0}


def digest(obj: object) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def old_params(trial) -> dict:
    """The params as main logged them before issue 25: today's plus the fields named in ``DROPPED``; and an
    evaluation without ``source_iters`` logged the *target's* iterations as the source's, which was wrong
    where the source task's default differs (transfer_tasks: 2000 vs 3000); it logs the source's now."""
    out = {**DROPPED.get(trial.kind, {}), **trial.params()}
    out = {k: v for k, v in out.items() if ADDED.get(k, object()) != v}
    if trial.kind == "evaluation" and trial.source_iters is None:
        out["source_iters"] = trial.typed.target.run.fit.iters
    return out


def digests(name: str, profile: str, store: TrunkStore) -> dict:
    exp = load(name, profile)
    rows = []
    for t in exp.trials:
        kind = KINDS.get(t.kind)
        found, on = kind.chains(t.typed)
        rows.append({"key": t.key, "compact": t.compact(), "found": kind.found_key(t.typed),
                     "chains": [[c.dense_key, c.chain_key] for c in (found, on) if c is not None]})
    return {"trials": len(rows), "keys": digest(rows),
            "fits": digest([[p.fits_needed, p.iters] for p in plan(exp, store)]),
            "params": digest([old_params(t) for t in exp.trials])}


def test_every_experiment_and_profile_keeps_its_keys_specs_fits_and_params(tmp_path):
    got = {f"{n}/{p}": digests(n, p, TrunkStore(tmp_path / "store")) for n in experiment_names() for p in PROFILES}
    if os.environ.get("LIPSWEEP_REPIN"):
        PINS.write_text(json.dumps(got, indent=1, sort_keys=True) + "\n")
    pinned = json.loads(PINS.read_text())
    assert len(got) == 57 and set(got) == set(pinned)
    assert {k: v for k, v in got.items() if v != pinned[k]} == {}


@pytest.mark.parametrize("kind,name", [("gan", "gan_lip"), ("evaluation", "transfer_tasks"),
                                       ("classify", "classification_transfer"),
                                       ("classify_transfer", "classification_transfer")])
def test_the_dropped_params_are_exactly_the_fields_the_kind_does_not_read(kind, name):
    trial = next(t for t in load(name, "smoke").trials if t.kind == kind)
    reads = KINDS.get(kind).reads
    assert set(DROPPED[kind]).isdisjoint(reads) and set(DROPPED[kind]).isdisjoint(trial.params())
    assert set(trial.params()) <= reads and "data" in trial.params() or kind in ("gan", "evaluation")
