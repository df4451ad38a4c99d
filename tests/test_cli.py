import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from lipsweep.cli.main import main
from lipsweep.problems.images import load_image, load_mask_image
from lipsweep.problems.metrics import psnr

FAST = ["--size", "64", "--width", "8", "--iters", "20", "--quiet"]


def test_fit_writes_metrics_and_images(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["fit", "--image", "Set5/bird", "--task", "sr4", *FAST, "--out", str(out)]) == 0
    m = json.loads((out / "metrics.json").read_text())
    for key in ["psnr_final", "psnr_ema", "psnr_peak", "peak_iter", "ssim_final", "psnr_observation", "params",
                "nonzero_params", "seconds", "iters_per_second", "ypsnr_final"]:
        assert key in m, key
    assert m["config"]["problem"]["task"] == "sr4" and m["config"]["fit"]["iters"] == 20
    assert m["platform"]["device"] == "cpu" and m["platform"]["threads"] == 1  # where it was computed
    assert Image.open(out / "restored.png").size == (64, 64)
    assert Image.open(out / "observation.png").size == (16, 16)
    assert "psnr final" in capsys.readouterr().out


def test_fit_shows_progress(tmp_path, capsys):
    args = ["fit", "--image", "Set5/baby", "--task", "denoise", "--size", "64", "--width", "8", "--iters", "20"]
    assert main([*args, "--out", str(tmp_path)]) == 0
    err = capsys.readouterr().err
    assert "100%" in err and "20.0/20 it [" in err and "it/s" in err and err.count("20.0/20 it") == 1


def test_inpainting_mask_image_from_the_cli(tmp_path):
    out = tmp_path / "kate"
    assert main(["fit", "--image", "DIP/inpainting/kate", "--task", "inpaint", "--mask", "DIP/kate_mask",
                 *FAST, "--out", str(out)]) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["config"]["problem"]["inpaint_mask"] == "DIP/kate_mask"
    # the fit saw the kate mask, not Bernoulli(0.5): its observation is black exactly where the mask hides
    clean = load_image("DIP/inpainting/kate", size=64).pixels
    keep = load_mask_image("DIP/kate_mask", clean.shape[:2], size=64)
    observed = np.asarray(Image.open(out / "observation.png"))
    assert 0.95 < keep.mean() < 0.97  # 4% hidden
    assert (observed[~keep] == 0).all() and np.array_equal(observed[keep], np.round(clean[keep] * 255))
    assert m["psnr_observation"] == pytest.approx(psnr(clean * keep[..., None], clean), abs=1e-9)  # 18.35 dB


def test_models_json_gives_exact_counts(capsys):
    assert main(["models", "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows["dip"]["params"] == 2_217_831 and rows["dip"]["conv_weights"] == 2_208_768
    assert rows["deep_decoder"]["params"] == 100_224
    assert rows["deep_decoder_k320"]["params"] == 619_200


def test_images_lists_the_shipped_sets(capsys):
    assert main(["images", "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows["Set5/baby"]["width"] == 512 and rows["Set14/zebra"]["height"] == 391


@pytest.mark.parametrize("args,expected", [
    (["--image", "Set5/nope", "--task", "denoise"], "image: no shipped image or file 'Set5/nope'"),
    (["--image", "Set5/baby", "--task", "deblur"], "argument --task: invalid choice: 'deblur'"),
    (["--image", "Set5/baby", "--task", "denoise", "--model", "vit"], "argument --model: invalid choice: 'vit'"),
    (["--image", "Set5/baby", "--task", "denoise", "--iters", "0"], "iters: must be a positive integer, got 0"),
    (["--image", "Set5/baby", "--task", "denoise", "--size", "-5"], "size: must be a positive integer"),
    (["--image", "Set5/baby", "--task", "denoise", "--size", "0"], "size: must be a positive integer"),
    (["--image", "Set5/baby", "--task", "denoise", "--size", "40"], "image: 32x32 after cropping"),
    (["--image", "Set5/baby", "--task", "denoise", "--width", "0"], "width: must be a positive integer"),
    (["--image", "Set5/baby", "--task", "denoise", "--mask", "DIP/kate_mask"], "inpaint_mask: only applies"),
    (["--image", "Set5/baby", "--task", "denoise", "--iters", "ten"], "expected an integer, got 'ten'"),
])
def test_bad_input_is_one_line_exit_2(args, expected, tmp_path, capsys):
    with pytest.raises(SystemExit) if "argument" in expected or "integer, got 'ten'" in expected else _nullctx() as ctx:
        code = main(["fit", *args, "--out", str(tmp_path)])
    code = ctx.value.code if ctx is not None and hasattr(ctx, "value") else code
    assert code == 2
    err = capsys.readouterr().err
    assert expected in err
    assert err.count("\n") == 1 and "Traceback" not in err


class _nullctx:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


def test_non_image_and_small_files_fail_cleanly_in_a_real_process(tmp_path, image_file):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x00garbage")
    for path, expected in [(bad, "is not a readable image file"), (image_file(48, 48), "too small")]:
        proc = subprocess.run([sys.executable, "-m", "lipsweep.cli.main", "fit", "--image", str(path), "--task", "denoise",
                               "--out", str(tmp_path / "o")], capture_output=True, text=True)
        assert proc.returncode == 2
        assert expected in proc.stderr and "Traceback" not in proc.stderr
        assert proc.stderr.strip().count("\n") == 0


def test_grayscale_input_is_converted_with_a_note(tmp_path, image_file, capsys):
    path = image_file(64, 64, "L")
    assert main(["fit", "--image", str(path), "--task", "denoise", *FAST[2:], "--out", str(tmp_path / "o")]) == 0
    assert "converted L image to RGB" in capsys.readouterr().err


def test_fit_serves_the_same_fit_from_out_and_recompute_keeps_the_old_files(tmp_path, capsys):
    args = ["fit", "--image", "Set5/baby", "--task", "denoise", "--size", "64", "--width", "4", "--iters", "10",
            "--quiet", "--out", str(tmp_path)]
    assert main(args) == 0
    first = json.loads((tmp_path / "metrics.json").read_text())
    capsys.readouterr()
    assert main(args) == 0  # same config, same code: nothing is fitted
    assert "already holds this fit" in capsys.readouterr().out and not list(tmp_path.glob("previous-*"))
    assert main([*args, "--recompute"]) == 0
    aside = list(tmp_path.glob("previous-*"))
    assert len(aside) == 1 and json.loads((aside[0] / "metrics.json").read_text())["key"] == first["key"]
    again = json.loads((tmp_path / "metrics.json").read_text())
    assert again["psnr_ema"] == first["psnr_ema"] and again["key"] == first["key"]  # deterministic on CPU
