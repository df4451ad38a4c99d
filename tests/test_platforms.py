"""Where a result was computed (issue 24): every stored level, fit-log line and MLflow run names its platform;
by default one store serves every platform and a chain continued elsewhere is recorded and shown as mixed;
``platform_key: true`` keeps platforms apart. The other platform is real: a subprocess running torch's
portable kernels (``ATEN_CPU_CAPABILITY=default``), whose float sums differ from this machine's AVX2/AVX-512."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch

from lipsweep.core.errors import ConfigError
from lipsweep.core.paths import record_of
from lipsweep.core.platforms import current, label_of
from lipsweep.experiments.plan import stored_platforms
from lipsweep.kinds.base import TrialConfig
from lipsweep.lottery.store import TrunkStore
from lipsweep.lottery.tickets import Tickets

TINY = dict(image="Set5/baby", size=64, width=4, iters=8, levels=2)
OTHER = "DEFAULT"  # the kernel set the subprocess runs

needs_other = pytest.mark.skipif(torch.backends.cpu.get_cpu_capability() == OTHER,
                                 reason="this CPU runs the portable kernels itself: no second kernel set to compare")


def levels_elsewhere(store, levels: int, **fields) -> list[dict]:
    """Levels 0..``levels`` of TINY computed by another process under the portable kernels."""
    code = ("import json, sys; from lipsweep.lottery.store import TrunkStore; from lipsweep.lottery.tickets import Tickets; "
            "from lipsweep.kinds.base import TrialConfig; t = TrialConfig(**json.loads(sys.argv[2])); "
            "tk = Tickets(TrunkStore(sys.argv[1])); "
            "print(json.dumps([r.to_dict() for r in tk.iter_levels(t.chain(), int(sys.argv[3]))]))")
    out = subprocess.run([sys.executable, "-c", code, str(store), json.dumps({**TINY, **fields}), str(levels)],
                         env={**os.environ, "ATEN_CPU_CAPABILITY": OTHER.lower()}, capture_output=True, text=True,
                         check=True)
    return json.loads(out.stdout.splitlines()[-1])


def test_every_stored_level_and_fit_log_line_names_its_platform(tmp_path):
    store = TrunkStore(tmp_path)
    tk = Tickets(store)
    recs = list(tk.iter_levels(TrialConfig(**TINY).chain(), 2))
    here = current(1).as_dict()
    assert here["device"] == "cpu" and here["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert here["torch"] == torch.__version__.split("+")[0] and here["threads"] == 1 and here["device_name"]
    assert [r.platform for r in recs] == [here] * 3
    assert [json.loads(record_of(tmp_path / r.where).read_text())["platform"] for r in recs] == [here] * 3
    log = store.fit_log()
    assert len(log) == 3 and all(e["platform"] == here for e in log)
    assert stored_platforms(SimpleNamespace(trials=[TrialConfig(**TINY)]), store) == {
        label_of(here): [f"dense {recs[0].where.split('/')[-1]}", *[f"chain {recs[1].where.split('/')[-2]} level {lvl}"
                                                                    for lvl in (1, 2)]]}


@needs_other
def test_a_chain_continued_on_another_platform_is_served_and_recorded_as_mixed(tmp_path):
    """Default policy: the store serves levels 0-1 computed elsewhere (no refit), level 2 is fitted here, and
    each record, the store listing (``lipsweep show``) and the MLflow run say the chain is mixed."""
    from lipsweep.analysis.report import Report, write_platforms
    from lipsweep.analysis.runs import Runs

    from lipsweep.tracking.tracker import PLATFORM_TAG, Tracker

    there = levels_elsewhere(tmp_path / "store", 1)
    tk = Tickets(TrunkStore(tmp_path / "store"))
    recs = list(tk.iter_levels(TrialConfig(**TINY).chain(), 2))
    assert tk.fits == 1  # level 2 only: levels 0 and 1 were served
    assert [r.to_dict() for r in recs[:2]] == there
    caps = [r.platform["cpu_capability"] for r in recs]
    assert caps == [OTHER, OTHER, torch.backends.cpu.get_cpu_capability()]
    shown = stored_platforms(SimpleNamespace(trials=[TrialConfig(**TINY)]), tk.store)
    assert sorted(len(v) for v in shown.values()) == [1, 2] and label_of(recs[2].platform) in shown

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = Tracker(uri, "lipsweep/mixed")
    parent = tracker.parent("sweep", "sweep", {"profile": "smoke"})
    run = tracker.child(parent, "trial", "mixed chain", {"kind": "chain"})
    for rec in recs:
        assert tracker.log_level(run, rec.to_dict(), tk.store.root)
    tags = tracker.client.get_run(run).data.tags
    assert tags[PLATFORM_TAG] == f"mixed: {label_of(recs[0].platform)} | {label_of(recs[2].platform)}"
    assert tags[f"{PLATFORM_TAG}s"] == "2" and tags[f"{PLATFORM_TAG}.level_02"] == label_of(recs[2].platform)
    rep = Report(tmp_path / "report")
    (tmp_path / "report").mkdir()
    write_platforms(rep, Runs(uri, "mixed").table(parent))
    assert [title for title, _, _ in rep.sections] == ["Computed on more than one platform"]
    text = (tmp_path / "report" / "platforms.md").read_text()
    assert label_of(recs[0].platform) in text and "mixed chain" in text


@needs_other
def test_platform_key_keeps_platforms_apart(tmp_path):
    """``platform_key: true``: nothing computed under the other kernels is served here; the platform's
    fingerprint is in the dense key, and the same platform again loads its own results."""
    keyed = TrialConfig(**TINY, platform_key=True)
    assert keyed.key != TrialConfig(**TINY).key and keyed.chain().platform == current(1).fingerprint
    assert keyed.chain().dense_key != TrialConfig(**TINY).chain().dense_key
    there = levels_elsewhere(tmp_path, 2, platform_key=True)
    tk = Tickets(TrunkStore(tmp_path))
    recs = list(tk.iter_levels(keyed.chain(), 2))
    assert tk.fits == 3  # dense, levels 1 and 2: all computed again
    assert there[0]["where"] != recs[0].where and {r["platform"]["cpu_capability"] for r in there} == {OTHER}
    assert len(list(tmp_path.glob("dense/*/level.json"))) == 2
    again = Tickets(TrunkStore(tmp_path))
    assert [r.to_dict() for r in again.iter_levels(keyed.chain(), 2)] == [r.to_dict() for r in recs]
    assert again.fits == 0


def test_deterministic_kernels_are_recorded_and_the_process_settings_restored(tmp_path):
    tk = Tickets(TrunkStore(tmp_path))
    rec = list(tk.iter_levels(TrialConfig(**{**TINY, "levels": 0}, deterministic=True).chain(), 0))[0]
    assert rec.platform["deterministic"] is True and rec.platform["cudnn_benchmark"] is False
    assert not torch.are_deterministic_algorithms_enabled()
    plain = Tickets(TrunkStore(tmp_path))  # the same key: deterministic is a platform fact, not a config one
    assert list(plain.iter_levels(TrialConfig(**{**TINY, "levels": 0}).chain(), 0))[0] == rec and plain.fits == 0


@pytest.mark.parametrize("field", ["deterministic", "platform_key"])
def test_platform_fields_are_refused_where_no_dip_fit_reads_them(field):
    with pytest.raises(ConfigError) as err:
        TrialConfig(kind="gan", model="pggan", task="cs", levels=1, **{field: True})
    assert err.value.field == field and "'gan'" in err.value.message
    with pytest.raises(ConfigError) as err:
        TrialConfig(**{field: "yes"})
    assert err.value.field == field and "true or false" in err.value.message
