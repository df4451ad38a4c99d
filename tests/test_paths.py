"""Paths given relative to the directory a command runs in (issue 26): made absolute once, on the driver, so
``compact()`` carries them to Ray workers, whose directory is another; shipped names stay names."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from lipsweep.cli.main import main
from lipsweep.core.errors import ConfigError
from lipsweep.kinds.base import KINDS, TrialConfig
from lipsweep.kinds.classify.data import CIFAR_FILES
from lipsweep.kinds.gan.train import load_faces
from lipsweep.priors.pggan import Discriminator, Generator, GeneratorSpec, load_checkpoint, save_checkpoint

TINY = {"size": 64, "width": 4, "iters": 5, "levels": 1}


def write_image(path: Path, size: int = 96, mode: str = "RGB", seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    shape = (size, size) if mode == "L" else (size, size, 3)
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8), mode).save(path)
    return path


def rebuilt_elsewhere(trial: TrialConfig, tmp_path: Path, monkeypatch) -> TrialConfig:
    """The trial as a Ray worker makes it: from ``compact()``, in another directory."""
    elsewhere = tmp_path / "worker"
    elsewhere.mkdir(exist_ok=True)
    monkeypatch.chdir(elsewhere)
    return TrialConfig(**trial.compact())


@pytest.mark.parametrize("fields, absolute", [
    ({"image": "img/rgb96.png"}, ["image"]),
    ({"image": "img/rgb96.png", "task": "inpaint", "inpaint_mask": "img/mask96.png"}, ["image", "inpaint_mask"]),
    ({"multi_images": ["img/rgb96.png", "Set5/baby"]}, ["multi_images"]),
    ({"kind": "evaluation", "source_image": "img/rgb96.png", "source_multi_images": ["img/rgb96.png"]},
     ["source_image", "source_multi_images"]),
])
def test_relative_images_travel_as_absolute_paths_with_the_same_key(tmp_path, monkeypatch, fields, absolute):
    monkeypatch.chdir(tmp_path)
    write_image(tmp_path / "img" / "rgb96.png")
    write_image(tmp_path / "img" / "mask96.png", mode="L", seed=1)
    trial = TrialConfig(**TINY, **fields)
    wire = trial.compact()
    for name in absolute:
        for value in (wire[name],) if isinstance(wire[name], str) else wire[name]:
            assert value == "Set5/baby" or (Path(value).is_absolute() and Path(value).is_file())
    worker = rebuilt_elsewhere(trial, tmp_path, monkeypatch)
    assert worker.key == trial.key and worker.compact() == wire
    assert TrialConfig(**TINY).image == "Set5/baby"  # a shipped name stays a name (its key unchanged)


SPEC = GeneratorSpec(latent=8, depths=(16, 8, 8), out_channels=1)  # 16 px, grey


def write_generator(path: Path, meta: dict | None = None) -> Path:
    torch.manual_seed(0)
    save_checkpoint(str(path), SPEC, Generator(SPEC), Discriminator(SPEC), meta or {"note": "test"})
    return path


def faces(folder: Path, n: int = 6, size: int = 20) -> Path:
    for i in range(n):
        write_image(folder / f"f{i}.png", size, "L", seed=i)
    return folder


GAN = {"kind": "gan", "model": "pggan", "task": "cs", "measurements": 64, "outliers": 2, "iters": 5, "restarts": 1,
       "tune_epochs": 1, "levels": 1}


def test_a_relative_generator_checkpoint_and_data_folder_travel_as_absolute_paths(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    faces(tmp_path / "faces")
    write_generator(tmp_path / "out" / "g1.pt")
    trial = TrialConfig(**GAN, generator="out/g1.pt", data="faces", image="faces/f0.png")
    wire = trial.compact()
    assert wire["generator"] == str(tmp_path / "out" / "g1.pt") and wire["data"] == str(tmp_path / "faces")
    worker = rebuilt_elsewhere(trial, tmp_path, monkeypatch)
    assert worker.key == trial.key
    KINDS.get("gan").ready(worker.typed)
    shipped = TrialConfig(**{**GAN, "generator": "faces32", "measurements": 100}, image="lfw_faces/face_080")
    assert shipped.generator == "faces32"  # a shipped generator stays a name


def test_a_generator_trained_from_relative_data_records_the_absolute_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    faces(tmp_path / "img" / "cat", n=6, size=40)
    assert main(["gan", "train", "--data", "img/cat", "--size", "32", "--out", "g.pt", "--steps", "1",
                 "--holdout", "2", "--threads", "1"]) == 0
    assert load_checkpoint(str(tmp_path / "g.pt")).meta["data"] == str(tmp_path / "img" / "cat")
    trial = TrialConfig(**{**GAN, "measurements": 100}, generator="g.pt", image="img/cat/f5.png")
    worker = rebuilt_elsewhere(trial, tmp_path, monkeypatch)
    KINDS.get("gan").ready(worker.typed)  # IMP fine-tunes on the generator's own data, found from anywhere
    info = worker.typed.eval.ticket.generator
    assert worker.key == trial.key and len(load_faces(info.data, info.size, info.channels)) == 6


def test_a_checkpoint_that_records_relative_data_is_refused_before_ray(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    faces(tmp_path / "faces")
    write_generator(tmp_path / "old.pt", {"data": "faces", "holdout": 2, "train_images": 4})
    trial = TrialConfig(**GAN, generator="old.pt", image="faces/f0.png")
    with pytest.raises(ConfigError) as err:
        KINDS.get("gan").ready(trial.typed)
    assert err.value.field == "data" and "relative" in err.value.message
    KINDS.get("gan").ready(TrialConfig(**GAN, generator="old.pt", image="faces/f0.png", method="magnitude").typed)


CLASSIFY = {"kind": "classify", "size": 64, "width": 4, "iters": 5, "levels": 1, "epochs": 1, "examples": 4}


@pytest.mark.parametrize("data", ["set", "cifar10:cifar"])
def test_a_relative_classification_data_folder_travels_as_an_absolute_path(tmp_path, monkeypatch, data):
    monkeypatch.chdir(tmp_path)
    for label in ("a", "b"):
        for i in range(4):
            write_image(tmp_path / "set" / label / f"{i}.png", 16, seed=i)
    (tmp_path / "cifar").mkdir()
    for name in CIFAR_FILES:
        (tmp_path / "cifar" / name).write_bytes(name.encode())
    trial = TrialConfig(**CLASSIFY, data=data)
    name, _, path = data.rpartition(":")
    assert trial.compact()["data"] == (f"{name}:" if name else "") + str(tmp_path / path)
    worker = rebuilt_elsewhere(trial, tmp_path, monkeypatch)
    assert worker.key == trial.key
    assert TrialConfig(**CLASSIFY, data="lfw_faces").data == "lfw_faces"  # a set's name stays a name


@pytest.mark.ray
def test_a_smoke_sweep_from_a_relative_image_path_finishes_every_trial(ray_local, tmp_path, monkeypatch):
    from lipsweep.experiments.spec import load
    from lipsweep.sweep.options import SweepOptions
    from lipsweep.sweep.tune import run_sweep

    monkeypatch.chdir(tmp_path)
    write_image(tmp_path / "img" / "rgb96.png")
    exp = load("rewind_ablation", "smoke", {"image": "img/rgb96.png", **TINY})
    opts = SweepOptions(store=str(tmp_path / "store"), storage=str(tmp_path / "tune"),
                        tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}", quiet=True, max_failures=0)
    summary = run_sweep(exp, opts)
    assert sorted(summary.finished) == sorted(t.key for t in exp.trials) and not summary.failed
    assert len(exp.trials) == 2
