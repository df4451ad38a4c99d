"""Never silently wrong, round 2 (issue 26): what used to hang, end in a traceback or pass silently is one line
naming the field and the fix, before any work. Each test failed on main before the change (e244337 / 46aedf5)."""

from __future__ import annotations

import http.server
import logging
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lipsweep.cli.main import main
from lipsweep.core.errors import ConfigError
from lipsweep.experiments.spec import load

SPEC = Path(__file__).resolve().parent.parent / "search_spaces" / "rewind_ablation.yaml"


def spec_copy(tmp_path: Path, name: str, edit=lambda text: text) -> Path:
    """``rewind_ablation.yaml`` under another name, edited."""
    text = SPEC.read_text().replace("name: rewind_ablation", f"name: {name}", 1)
    out = tmp_path / f"{name}.yaml"
    out.write_text(edit(text))
    return out


@pytest.fixture
def web_port():
    """A real HTTP server (what Ray's dashboard on 8265 or MLflow on 5000 is) on a free port."""
    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args) -> None:
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Quiet)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.server_address[1]
    server.shutdown()


@pytest.mark.parametrize("form", ["{}", "ray://{}"])
def test_an_address_that_answers_http_is_not_ray_and_says_so_at_once(web_port, form):
    from lipsweep.sweep.preflight import check_address

    with pytest.raises(ConfigError) as err:
        check_address(form.format(f"127.0.0.1:{web_port}"))
    assert err.value.field == "address" and "answers HTTP" in str(err.value) and "6379" in str(err.value)


def test_run_against_a_web_port_is_one_line_before_ray_starts(web_port, tmp_path, monkeypatch, capsys):
    import ray

    monkeypatch.chdir(tmp_path)
    rc = main(["run", "rewind_ablation", "--profile", "smoke", "--address", f"127.0.0.1:{web_port}"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "answers HTTP" in err[0] and not ray.is_initialized()


@pytest.mark.parametrize("plugin,expected", [("def f(:\n    pass\n", "failed to import (line 1): SyntaxError"),
                                             ("from lipsweep.pruning import METHODS, MaskMethod\n"
                                              "METHODS.register('random', MaskMethod())\n",
                                              "'random' is already registered")])
def test_a_plugin_that_does_not_import_is_one_line_in_show(tmp_path, capsys, plugin, expected):
    (tmp_path / "plug.py").write_text(plugin)
    spec = spec_copy(tmp_path, "plugged", lambda t: t.replace("\nbase:", "\nplugins: [plug.py]\nbase:", 1))
    assert main(["show", str(spec), "--profile", "smoke"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "plugins: plugin" in err[0] and expected in err[0]


def test_a_metric_the_trials_do_not_report_is_refused_with_the_allowed_ones(tmp_path):
    spec = spec_copy(tmp_path, "gan_metric", lambda t: t.replace("\nmetric: psnr_ema\n", "\nmetric: psnr\n", 1))
    with pytest.raises(ConfigError) as err:
        load(str(spec), "smoke")
    assert err.value.field.endswith("metric") and "'psnr' is not reported by kind chain" in str(err.value)
    assert "psnr_ema_peak" in str(err.value) and "accuracy" not in str(err.value)
    assert load("rewind_ablation", "smoke").metric == "psnr_ema"  # the shipped one passes


def test_a_nan_budget_and_a_duplicate_key_are_refused(tmp_path):
    nan = spec_copy(tmp_path, "nan_budget", lambda t: t + "time_budget_s: .nan\n")
    with pytest.raises(ConfigError, match="time_budget_s: must be a number of seconds > 0, got nan"):
        load(str(nan), "smoke")
    twice = spec_copy(tmp_path, "twice", lambda t: t.replace("\nbase:\n", "\nbase:\n  seed: 3\n  seed: 4\n", 1))
    with pytest.raises(ConfigError) as err:
        load(str(twice), "smoke")
    assert "key 'seed' is given twice" in str(err.value) and "\n" not in str(err.value)


def test_threads_beyond_the_cpus_a_trial_reserves_are_refused():
    assert {t.threads for t in load("rewind_ablation", "smoke").trials} == {1}
    with pytest.raises(ConfigError) as err:
        load("rewind_ablation", "smoke", {"threads": 64})
    assert err.value.field.endswith("threads") and "resources.cpu: 1" in str(err.value) and "1..1" in str(err.value)


def test_a_portrait_photo_with_exif_orientation_is_fitted_upright(tmp_path):
    from lipsweep.kinds.base import TrialConfig
    from lipsweep.problems.images import check_image, content_hash, load_image

    upright = np.zeros((96, 64, 3), np.uint8)
    upright[:16] = 255  # a white band at the top of a portrait 64 x 96 image
    stored = Image.fromarray(upright).transpose(Image.Transpose.ROTATE_90)  # as a camera writes it: sideways
    exif = stored.getexif()
    exif[0x0112] = 6  # "turn 90 degrees clockwise to view"
    photo = tmp_path / "portrait.jpg"
    stored.save(photo, exif=exif.tobytes(), quality=95)
    loaded = load_image(str(photo), multiple=32).pixels
    assert loaded.shape == (96, 64, 3) and loaded[:8].mean() > 0.95 and loaded[-8:].mean() < 0.05
    assert check_image(str(photo), None, 32) == (64, 96)  # width x height as shown
    plain = tmp_path / "plain.jpg"
    plain.write_bytes(photo.read_bytes())
    assert content_hash(str(photo)) == content_hash(str(plain))  # by content, as before
    TrialConfig(image=str(photo), width=4, iters=5, levels=1)  # validates at the upright size


def test_resume_with_nothing_saved_says_so(tmp_path, capsys):
    from lipsweep.sweep.options import SweepOptions
    from lipsweep.sweep.tune import _check_resume

    assert _check_resume(str(tmp_path / "never-run"), SweepOptions(resume=True)) is False
    assert "--resume found no saved sweep" in capsys.readouterr().err


def test_tunes_own_restore_hint_is_not_printed_beside_lipsweeps():
    from lipsweep.sweep.tune import _NoTuneRestoreHint

    hint = logging.LogRecord("ray.tune.tune", logging.WARNING, __file__, 1, "Experiment has been interrupted, but "
                             "the most recent state was saved.\nResume experiment with: Tuner.restore(path=...)",
                             None, None)
    other = logging.LogRecord("ray.tune.tune", logging.WARNING, __file__, 1, "Trials did not complete", None, None)
    assert _NoTuneRestoreHint().filter(hint) is False and _NoTuneRestoreHint().filter(other) is True


def test_a_second_driver_is_refused_before_its_ray_starts(tmp_path):
    import ray

    from lipsweep.lottery.store import TrunkStore
    from lipsweep.sweep.options import SweepOptions, sweep_key
    from lipsweep.sweep.tune import run_sweep

    exp = load("rewind_ablation", "smoke")
    store = tmp_path / "store"
    opts = SweepOptions(store=str(store), storage=str(tmp_path / "runs"),
                        tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    with TrunkStore(store).lock(f"driver-{sweep_key(exp)}", wait=False):  # the first driver
        with pytest.raises(ConfigError, match="another driver is running this sweep"):
            run_sweep(exp, opts)
    assert not ray.is_initialized() and not (tmp_path / "mlflow.db").exists()


def test_analyze_takes_a_yaml_path_and_creates_no_database(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["analyze", str(SPEC), "--tracking-uri", f"sqlite:///{tmp_path / 'new.db'}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no MLflow store" in err[0] and not (tmp_path / "new.db").exists()
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path / 'empty.db'}"
    MlflowClient(tracking_uri=uri).search_experiments()  # an existing store without this experiment
    assert main(["analyze", str(SPEC), "--tracking-uri", uri]) == 2
    err = capsys.readouterr().err
    assert "'lipsweep/rewind_ablation'" in err and "rewind_ablation.yaml" not in err


class _Tracker:  # what the driver's callback needs of a tracker when nothing is logged
    uri = "sqlite:///unused.db"


class _Trial:  # the attributes of a Tune trial the callback reads
    def __init__(self, trial_id: str, status: str, level: int | None):
        self.trial_id, self.status = trial_id, status
        self.config = {"trial": trial_id}
        self.last_result = {} if level is None else {"level": level}


def test_after_a_resume_the_bar_counts_the_levels_of_trials_finished_before(tmp_path):
    """Two trials of 5 levels each finished before the restore; they report nothing again, so the bar used to
    end at 0/10 levels while the summary said 2/2 finished."""
    from lipsweep.sweep.driver import LevelLogger

    logger = LevelLogger(_Tracker(), str(tmp_path), total_levels=10, n_trials=2, every_s=0.0)
    trials = [_Trial("a", "TERMINATED", 4), _Trial("b", "TERMINATED", 4)]
    logger._progress(trials, force=True)
    assert logger.bar.n == 10 and sum(logger.outcome.values()) == 2
    logger.outbox.drain()


def test_an_input_file_only_this_node_has_is_refused_on_a_multi_node_cluster(tmp_path, monkeypatch, image_file):
    """A relative or absolute image path works on a one-machine Ray; on a cluster of several nodes the other
    nodes cannot read it: refused before any trial, with the shared-path advice (the store and storage too)."""
    from lipsweep.sweep import preflight
    from lipsweep.sweep.preflight import check_cluster_paths, input_paths

    img = image_file(96, 96, name="mine.png")
    exp = load("rewind_ablation", "smoke", {"image": str(img)})
    assert input_paths(exp) == [("image", str(img))]
    assert input_paths(load("rewind_ablation", "smoke")) == []  # shipped images are on every node
    monkeypatch.setattr(preflight, "planned_size", lambda attached: (3, "the cluster has 3 nodes"))
    with pytest.raises(ConfigError) as err:
        check_cluster_paths(input_paths(exp), ())
    assert err.value.field == "image" and "node-local" in str(err.value) and "--shared-path" in str(err.value)
    check_cluster_paths(input_paths(exp), (str(tmp_path),))  # declared shared: accepted


def test_run_on_a_store_it_cannot_write_is_one_line_before_ray_starts(tmp_path, monkeypatch, capsys):
    """The store path is a file (what a read-only mount answers alike, here without needing chmod, which root
    ignores): refused up front, not a traceback from the driver lock after Ray started."""
    import ray

    monkeypatch.chdir(tmp_path)
    (tmp_path / "store").write_text("not a folder")
    assert main(["run", "rewind_ablation", "--profile", "smoke", "--store", "store", "--no-analysis"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "store:" in err[0] and "not a writable directory" in err[0] and not ray.is_initialized()


def test_show_counts_a_damaged_level_record_as_missing_as_run_would(tmp_path):
    from lipsweep.core.paths import record_of
    from lipsweep.experiments.plan import plan
    from lipsweep.lottery.store import TrunkStore

    exp = load("rewind_ablation", "smoke")
    store = TrunkStore(tmp_path / "store")
    needed = plan(exp, store)[0].fits_needed
    level = store.level_dir(exp.trials[0].chain().chain_key, 1)
    level.mkdir(parents=True)
    record_of(level).write_text('{"level": 1, "sparsity": 0.2, "mask_hash": "ab"}')
    assert plan(exp, store)[0].fits_needed == needed - 1
    record_of(level).write_text('{"level": 1, "spars')  # torn by a killed writer
    assert plan(exp, store)[0].fits_needed == needed and record_of(level).is_file()  # not moved by show


def test_a_full_disk_is_one_line_and_leaves_the_store_whole(tmp_path, monkeypatch, capsys):
    """ENOSPC mid-run (simulated at the one place every store file is written): one line saying what to do,
    and nothing half-written left behind (every write is a temp file renamed)."""
    import errno

    from lipsweep.lottery import store as store_module

    real, calls = store_module.atomic_write, [0]

    def fills_up(path, data):
        calls[0] += 1
        if calls[0] > 3:  # the disk fills after a few files
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        real(path, data)

    monkeypatch.setattr(store_module, "atomic_write", fills_up)
    rc = main(["ticket", "--image", "Set5/baby", "--task", "denoise", "--size", "64", "--width", "4", "--iters", "5", "--levels", "1",
               "--store", str(tmp_path / "store"), "--out", str(tmp_path / "out"), "--quiet"])
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err and err.strip().splitlines()[-1].startswith("lipsweep ticket: error: store:")
    assert "the disk is full" in err and "free space, then run the same command again" in err
    assert not list((tmp_path / "store").rglob("*.tmp"))  # no partial file
