"""Never silently wrong: inputs that used to give a wrong result with exit 0 are refused in one line (exit 2)
or read correctly (issue 12)."""

import numpy as np
import pytest
from PIL import Image

from lipsweep.cli.main import main
from lipsweep.core.errors import ConfigError
from lipsweep.experiments.spec import load, parse_set
from lipsweep.problems.images import load_image, load_mask_image

FIT = ["fit", "--image", "Set5/baby", "--task", "denoise", "--size", "64", "--width", "8", "--iters", "5"]


def one_line(capsys) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    return err


@pytest.mark.parametrize("flag,value", [("--lr", "inf"), ("--lr", "nan"), ("--reg-noise-std", "nan"),
                                        ("--reg-noise-std", "inf")])
def test_non_finite_numbers_are_refused_not_trained_to_nan(flag, value, tmp_path, capsys):
    assert main([*FIT, flag, value, "--out", str(tmp_path)]) == 2
    assert f"{flag[2:].replace('-', '_')}: must be a finite number, got {value}" in one_line(capsys)


def test_a_leading_zero_is_not_octal():
    """YAML 1.1 read seed=010 as 8; now it is refused, naming the field, and 1e-3 is a number."""
    with pytest.raises(ConfigError, match=r"--set.seed: must be an integer >= 0, got '010'$"):
        load("rewind_ablation", "smoke", parse_set(["seed=010"]))
    assert parse_set(["seed=10", "lr=1e-3", "rewind=0.1"]) == {"seed": 10, "lr": 0.001, "rewind": 0.1}


def test_a_repeated_set_key_is_refused(capsys):
    assert main(["run", "rewind_ablation", "--profile", "smoke", "--set", "seed=1", "seed=2"]) == 2
    assert "--set: 'seed' is given twice" in one_line(capsys)


def test_a_16_bit_grayscale_png_keeps_its_values(tmp_path):
    ramp = np.tile(np.linspace(0, 65535, 64).astype(np.uint16), (64, 1))  # black to white, left to right
    path = tmp_path / "ramp16.png"
    Image.fromarray(ramp).save(path)
    assert Image.open(path).mode.startswith("I")
    img = load_image(str(path))
    assert img.pixels.mean() == pytest.approx(0.5, abs=0.01)  # was 0.98: PIL clipped every value above 255
    assert np.allclose(img.pixels[0, :, 0], ramp[0] / 65535, atol=1 / 255) and "16-bit" in img.notes[0]


def test_a_mask_made_for_another_size_is_not_stretched(tmp_path, image_file):
    image = image_file(64, 64, "RGB", "img.png")
    mask = tmp_path / "mask40.png"
    Image.fromarray(np.full((40, 40), 255, np.uint8)).save(mask)
    loaded = load_image(str(image), size=64)
    with pytest.raises(ConfigError, match=r"^inpaint_mask: mask file is 40x40 but the image file is 64x64"):
        load_mask_image(str(mask), (64, 64), 64, field="inpaint_mask", original=loaded.original)
    assert main(["fit", "--image", str(image), "--task", "inpaint", "--mask", str(mask), "--size", "64",
                 "--iters", "2", "--out", str(tmp_path / "o")]) == 2


@pytest.mark.parametrize("argv,expected", [
    (["fit", "--image", "Set5/baby", "--task", "denoise", "--out", "FILE"], "argument --out: 'FILE' is a file"),
    (["ticket", "--image", "Set5/baby", "--task", "denoise", "--out", "FILE"], "argument --out: 'FILE' is a file"),
    (["stop-search", "--from", "imp_early_stop", "--trials", "0"], "argument --trials: must be a positive integer"),
    (["run", "rewind_ablation", "--profile", "smoke", "--max-failures", "-1"], "argument --max-failures: must be an "
                                                                                "integer >= 0, got -1"),
])
def test_bad_arguments_are_one_line_not_tracebacks(argv, expected, tmp_path, capsys):
    (tmp_path / "FILE").write_text("")
    argv = [str(tmp_path / "FILE") if a == "FILE" else a for a in argv]
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2
    assert expected.replace("FILE", str(tmp_path / "FILE")) in one_line(capsys)


def test_a_dead_tracking_server_is_refused_before_ray_starts(capsys):
    import ray

    assert main(["run", "rewind_ablation", "--profile", "smoke", "--tracking-uri", "http://127.0.0.1:1"]) == 2
    assert "tracking_uri: cannot reach http://127.0.0.1:1" in one_line(capsys) and not ray.is_initialized()
    for argv in (["analyze", "rewind_ablation"], ["stop-search", "--from", "imp_early_stop"]):
        assert main([*argv, "--tracking-uri", "http://127.0.0.1:1"]) == 2
        assert "tracking_uri: cannot reach" in one_line(capsys)


def sweep_file(tmp_path, **changes):
    import yaml

    spec = yaml.safe_load(open(load("rewind_ablation", "smoke").file).read())
    for path, value in changes.items():
        node = spec
        *head, last = path.split(".")
        for key in head:
            node = node.setdefault(key, {})
        node[last] = value
    f = tmp_path / "rewind_ablation.yaml"
    f.write_text(yaml.safe_dump(spec))
    return str(f)


def test_every_trials_files_are_checked_before_any_trial_runs(tmp_path, image_file, capsys):
    import ray

    junk = tmp_path / "junk.png"
    junk.write_bytes(b"\x89PNG not really")
    small = image_file(48, 48, "RGB", "small.png")
    for image, expected in ((junk, "is not a readable image file"), (small, "too small")):
        f = sweep_file(tmp_path, **{"base.image": str(image)})
        assert main(["run", f, "--profile", "smoke", "--store", str(tmp_path / "s")]) == 2
        err = one_line(capsys)
        assert "rewind_ablation.yaml: base.image: " in err and expected in err
    assert not ray.is_initialized()


@pytest.mark.parametrize("change,extra,expected", [
    ({"profiles.smoke.resources": {"cpu": 1, "gpu": 1}}, [], "resources.gpu: 1 per trial, but this machine"),
    ({"profiles.smoke.resources": {"cpu": 64, "gpu": 0}}, [], "resources.cpu: 64 per trial, but this machine"),
    ({"base.device": "cuda"}, [], "device: cuda was requested but this machine"),
    ({}, ["--address", "127.0.0.1:1"], "address: nothing answers at 127.0.0.1:1"),
])
def test_what_no_node_can_run_is_refused_instead_of_waiting_forever(change, extra, expected, tmp_path, capsys):
    import ray
    import torch

    if torch.cuda.is_available() and expected.startswith(("resources.gpu", "device")):
        pytest.skip("this machine has a GPU: a GPU trial is not refused here")
    f = sweep_file(tmp_path, **change)
    assert main(["run", f, "--profile", "smoke", "--store", str(tmp_path / "s"), "--storage", str(tmp_path / "t"),
                 "--tracking-uri", f"sqlite:///{tmp_path / 'm.db'}", *extra]) == 2
    assert expected in one_line(capsys) and not ray.is_initialized()


def test_results_never_depend_on_the_process_thread_count(monkeypatch):
    """1 and 2 torch threads sum differently (19.884 vs 19.899 dB after 60 steps): a fit runs at its config's
    thread count whatever the process uses, and the store keys the two apart."""
    from dataclasses import replace
    from pathlib import Path

    import torch

    monkeypatch.syspath_prepend(str(Path(__file__).parent))  # undone after the test
    from conftest import tiny_run

    from lipsweep.fitting.fit import run
    from lipsweep.lottery.chain import ChainConfig

    cfg = tiny_run("denoise", iters=30, width=8)
    before = torch.get_num_threads()
    results = []
    for process_threads in (1, 2):
        torch.set_num_threads(process_threads)
        results.append(run(cfg)[0].metrics["psnr_final"])
    torch.set_num_threads(before)
    assert results[0] == results[1]
    assert ChainConfig(run=cfg).dense_key != ChainConfig(run=replace(cfg, threads=2)).dense_key
    assert load("rewind_ablation", "smoke").trials[0].threads == 1  # resources.cpu: 1


def test_a_fit_too_big_for_memory_is_refused_before_it_starts(tmp_path, capsys):
    from lipsweep.experiments.plan import check_memory, peak_bytes
    from lipsweep.kinds.base import TrialConfig

    assert main([*FIT[:5], "--size", "8192", "--out", str(tmp_path)]) == 2  # ~800 GiB at width 128
    assert "size: a fit of Set5/baby at size 8192 and width 128 needs about" in one_line(capsys)
    small = TrialConfig(size=256, width=128)
    assert 0.5 * 2**30 < peak_bytes(small) < 1.5 * 2**30  # measured: 530 MiB at 256 px, width 128
    check_memory([small], free=4 * 2**30)
    with pytest.raises(ConfigError, match="^size: "):
        check_memory([TrialConfig(size=1024, width=128)], free=4 * 2**30)
