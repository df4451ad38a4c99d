"""Shared tiny configs: CPU, 64 px, narrow nets, tens of iterations."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from lipsweep.config import ProblemConfig, RunConfig, default_fit
from lipsweep.priors import ModelConfig


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)
    yield


@pytest.fixture(scope="module")
def ray_local():
    """A local Ray for one test module's sweeps, shut down after it (the next module may start its own)."""
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield
    ray.shutdown()


def tiny_run(task: str = "denoise", iters: int = 60, width: int = 16, size: int = 64, seed: int = 0,
             image: str = "Set5/baby", model: str = "dip", **fit) -> RunConfig:
    return RunConfig(
        problem=ProblemConfig(image=image, task=task, size=size),
        model=ModelConfig(kind=model, width=width),
        fit=default_fit(task, model, iters=iters, **fit),
        seed=seed,
        device="cpu",
    )


@pytest.fixture
def image_file(tmp_path):
    """Write an image of a given size/mode to a temp file and return its path."""

    def make(w: int, h: int, mode: str = "RGB", name: str = "img.png"):
        rng = np.random.default_rng(0)
        channels = {"RGB": 3, "RGBA": 4, "L": 1}[mode]
        arr = rng.integers(0, 256, size=(h, w, channels), dtype=np.uint8)
        img = Image.fromarray(arr[..., 0] if channels == 1 else arr, mode)
        path = tmp_path / name
        img.save(path)
        return path

    return make
