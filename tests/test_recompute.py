"""``--recompute`` as the README promises it (issue 26): ``run`` takes it, and ``ticket`` keeps every file of a
replaced entry aside (``NAME.replaced-TIME``) with its old bytes; none is overwritten."""

import re
from pathlib import Path
from types import SimpleNamespace

from lipsweep.cli.main import main
from lipsweep.lottery.store import quarantine

TICKET = ["ticket", "--image", "Set5/baby", "--task", "denoise", "--size", "64", "--width", "4", "--iters", "5",
          "--levels", "1", "--quiet"]
REPLACED = re.compile(r"\.replaced-\d{8}T\d{6}(-\d+)?$")


def files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_run_takes_recompute_and_hands_it_to_the_sweep(monkeypatch, tmp_path):
    seen = []

    def fake_sweep(exp, opts, on_start=None):
        seen.append(opts.recompute)
        return SimpleNamespace(finished=["t"], failed=[], incomplete={}, failed_levels={}, cut=None, seconds=0.0,
                               parent_run_id="p", tune_path="t")

    monkeypatch.setattr("lipsweep.sweep.tune.run_sweep", fake_sweep)
    monkeypatch.setattr("lipsweep.tracking.tracker.check_reachable", lambda uri, must_exist=False: None)
    args = ["run", "rewind_ablation", "--profile", "smoke", "--no-analysis", "--store", str(tmp_path / "store"),
            "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}"]
    assert main([*args, "--recompute"]) == 0 and main(args) == 0
    assert seen == [True, False]


def test_ticket_recompute_keeps_every_file_of_a_replaced_entry_aside_with_its_old_bytes(tmp_path, capsys):
    store = tmp_path / "store"
    args = [*TICKET, "--store", str(store), "--out", str(tmp_path / "out")]
    assert main(args) == 0
    before = files(store)
    assert main([*args, "--recompute"]) == 0
    assert "2 levels (2 fits run" in capsys.readouterr().out  # level 0 and level 1 fitted again
    after = files(store)
    entries = [name for name in before if name.startswith("dense/") or "/level_" in name]
    assert {"final.pt", "theta0.pt", "mask.npz", "curve.json", "restored.png"} <= {n.split("/")[-1] for n in entries}
    for name in entries:  # the dense directory with its states, each level with its mask, images and curves
        aside = [k for k in after if k.startswith(f"{name}.replaced-") and REPLACED.search(k)]
        assert [after[k] for k in aside] == [before[name]], f"{name} was not kept aside with its old bytes"
    for name in set(before) - set(entries):  # the log grows; the schema, the chain's config and locks stay
        assert after[name].startswith(before[name]) if name == "fits.log" else after[name] == before[name], name


def test_two_set_asides_of_one_file_in_one_second_keep_both(tmp_path, monkeypatch):
    monkeypatch.setattr("lipsweep.lottery.store.time.strftime", lambda fmt: "20260101T000000")
    path = tmp_path / "level.json"
    for text in ("first", "second"):
        path.write_text(text)
        quarantine(path, "test", damaged=False, tag="replaced", say=False)
    assert sorted(p.read_text() for p in tmp_path.iterdir()) == ["first", "second"]


def test_fit_recompute_still_keeps_the_old_files_in_previous(tmp_path, capsys):
    out = tmp_path / "fit"
    args = ["fit", "--image", "Set5/baby", "--task", "denoise", "--size", "64", "--width", "4", "--iters", "5",
            "--quiet", "--out", str(out)]
    assert main(args) == 0
    before = files(out)
    assert main([*args, "--recompute"]) == 0
    (aside,) = out.glob("previous-*")
    assert files(aside) == before
