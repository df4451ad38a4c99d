"""Damage injected into a real trunk store: every damaged entry is named, moved aside and computed again to
the same result; nothing crashes with a traceback (issue 12)."""

import json

import pytest
from conftest import tiny_run

from lipsweep.cli.main import main
from lipsweep.core.paths import mask_of, record_of
from lipsweep.lottery.chain import ChainConfig
from lipsweep.lottery.store import TrunkStore
from lipsweep.lottery.tickets import Tickets

VOLATILE = ("seconds", "iters_per_second", "node_id", "where")


def cfg(rewind: float = 0.0) -> ChainConfig:
    return ChainConfig(run=tiny_run("denoise", iters=30, width=8), rewind=rewind)


def stable(records) -> list[dict]:
    return [{k: v for k, v in r.to_dict().items() if k not in VOLATILE and "seconds" not in k} for r in records]


@pytest.fixture
def stored(tmp_path):
    tickets = Tickets(TrunkStore(tmp_path / "store"))
    first = stable(tickets.chain(cfg(), 2).records)
    return tickets.store, first


def damaged_files(store: TrunkStore) -> list[str]:
    return sorted(p.name.split(".damaged-")[0] for p in store.root.rglob("*.damaged-*"))


@pytest.mark.parametrize("damage", ["truncate", "empty_object", "garbage"])
def test_a_damaged_level_record_is_moved_aside_and_refitted_to_the_same_numbers(stored, damage, capsys):
    store, first = stored
    path = record_of(store.level_dir(cfg().chain_key, 2))
    text = path.read_text()
    path.write_text({"truncate": text[: len(text) // 2], "empty_object": "{}", "garbage": "\x00\x01"}[damage])
    tickets = Tickets(store)
    again = stable(tickets.chain(cfg(), 2).records)
    assert again == first and tickets.fits == 1  # only level 2 fitted again
    assert damaged_files(store) == ["level.json"]
    err = capsys.readouterr().err
    assert f"lipsweep: store: {path} is damaged" in err and "computed again" in err


def test_a_flipped_byte_in_a_successor_mask_refits_the_level_that_writes_it(stored, capsys):
    store, first = stored
    bits = mask_of(store.level_dir(cfg().chain_key, 2)).with_suffix(".npz")
    raw = bytearray(bits.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    bits.write_bytes(bytes(raw))
    (record_of(store.level_dir(cfg().chain_key, 2))).unlink()  # level 2 must be fitted: it needs its mask
    tickets = Tickets(store)
    again = stable(tickets.chain(cfg(), 2).records)
    assert again == first and tickets.fits == 2  # level 1 again (it writes level 2's mask), then level 2
    assert "mask.npz" in damaged_files(store) and "is damaged" in capsys.readouterr().err


@pytest.mark.parametrize("weights", ["rewind_3.pt", "final.pt"])
def test_truncated_rewind_or_final_weights_are_recomputed(tmp_path, capsys, weights):
    """theta_j is replayed from theta_0 (a partial dense fit); lost final weights refit level 0."""
    store = TrunkStore(tmp_path / "store")
    first = stable(Tickets(store).chain(cfg(rewind=0.1), 1).records)
    path = store.paths.dense(cfg().dense_key) / weights
    path.write_bytes(path.read_bytes()[:100])
    (record_of(store.level_dir(cfg(rewind=0.1).chain_key, 1))).unlink()
    (mask_of(store.level_dir(cfg(rewind=0.1).chain_key, 1)).with_suffix(".json")).unlink()
    tickets = Tickets(store)
    assert stable(tickets.chain(cfg(rewind=0.1), 1).records) == first
    assert tickets.fits == 2  # the replay of theta_j, or level 0 again (it saves theta_j too); then level 1
    assert weights in damaged_files(store) and f"{weights} is damaged" in capsys.readouterr().err


def test_a_torn_fit_log_line_loses_only_itself(stored, capsys):
    store, _ = stored
    entries = store.fit_log()
    log = store.paths.fits_log
    text = log.read_text().splitlines(keepends=True)
    log.write_text("".join(text[:1]) + text[1][:25] + "".join(text[2:]))  # line 2 torn: no newline
    assert store.fit_log() == [entries[0], *entries[2:]]
    assert main(["show", "rewind_ablation", "--profile", "smoke", "--store", str(store.root)]) == 0


def test_mask_show_on_a_damaged_or_edited_mask_is_one_line(stored, capsys):
    store, _ = stored
    where = mask_of(store.level_dir(cfg().chain_key, 1))
    sidecar = where.with_suffix(".json")
    info = json.loads(sidecar.read_text())
    info["meta"]["method"] = "snip"  # provenance edited by hand
    sidecar.write_text(json.dumps(info))
    assert main(["mask", "show", str(where)]) == 2
    err = capsys.readouterr().err
    assert "provenance (meta) does not match its recorded hash (edited)" in err and err.count("\n") == 1
    info["meta"]["method"] = "imp"
    sidecar.write_text(json.dumps(info))
    where.with_suffix(".npz").write_bytes(b"PK\x03\x04 truncated")
    assert main(["mask", "show", str(where)]) == 2
    err = capsys.readouterr().err
    assert "is corrupted or not a lipsweep mask" in err and "Traceback" not in err and err.count("\n") == 1
