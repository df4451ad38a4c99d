"""Shared tiny configs: CPU, 64 px, narrow nets, tens of iterations; the markers that split the suite."""

from __future__ import annotations

import inspect
import re
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from lipsweep.fitting.config import ProblemConfig, RunConfig, default_fit
from lipsweep.priors import ModelConfig

# The fast/slow split (pyproject.toml declares the markers; `make check` runs what has none of these three).
# ``ray``: the test takes the ``ray_local`` fixture or its source (or a helper of its module it calls) starts a
# ``lipsweep run`` driver process. ``cluster`` is marked in the cluster files' own tests; such a test is not
# also ``ray``. ``slow``: the nodeids below (over ~10 s, neither of those) and the wheel build, marked in its file.
SPAWNS_A_DRIVER = re.compile(r"""["']lipsweep\.cli(\.main)?["'],\s*["']run["']""")
SLOW = (  # seconds measured in a full `make test` run (2 workers, 2 cores)
    "tests/test_protocol.py::test_imp_beats_random_by_a_db_at_high_sparsity_on_a_width_scaled_net",  # 30
    "tests/test_tickets.py::test_rewind_ablation_shares_the_dense_level",  # 10.6
    "tests/test_tickets.py::test_other_methods_match_imp_counts_and_random_profile_copies_the_lip",  # 10.1
)


def _source(fn) -> str:
    """The test function's source and that of its module's own functions it names (one level down)."""
    module = inspect.getmodule(fn)
    helpers = [getattr(module, n) for n in fn.__code__.co_names
               if inspect.isfunction(getattr(module, n, None)) and getattr(module, n).__module__ == module.__name__]
    try:
        return "\n".join(inspect.getsource(f) for f in (fn, *helpers))
    except (OSError, TypeError):
        return ""


@pytest.hookimpl(tryfirst=True)  # before -m deselects by marker
def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.get_closest_marker("cluster") is None and (
                "ray_local" in getattr(item, "fixturenames", ())
                or (getattr(item, "function", None) and SPAWNS_A_DRIVER.search(_source(item.function)))):
            item.add_marker(pytest.mark.ray)
        if item.nodeid.startswith(SLOW):
            item.add_marker(pytest.mark.slow)
    _warn_about_stale_entries(items)


def _warn_about_stale_entries(items) -> None:
    """A renamed test would silently leave SLOW (and land in `make check`): say so when its file is collected."""
    modules = {item.nodeid.split("::")[0]: item.module for item in items if getattr(item, "module", None)}
    for entry in SLOW:
        path, _, name = entry.partition("::")
        if path in modules and not hasattr(modules[path], name.split("[")[0]):
            warnings.warn(pytest.PytestWarning(f"tests/conftest.py SLOW names {entry}, which no longer exists"))


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


def gan_files(tmp_path: Path) -> tuple[Path, Path]:
    """A tiny random 16 px grey generator (zoo format) and a folder of 8 random 20 px faces: what the GAN
    kind's tests fine-tune and restore, each fit well under a second."""
    from lipsweep.priors.pggan import Discriminator, Generator, GeneratorSpec, save_checkpoint

    rng = np.random.default_rng(0)
    data = tmp_path / "faces"
    data.mkdir()
    for i in range(8):
        Image.fromarray(rng.integers(0, 256, (20, 20), dtype=np.uint8), "L").save(data / f"f{i}.png")
    spec = GeneratorSpec(latent=8, depths=(16, 8, 8), out_channels=1)
    torch.manual_seed(0)
    save_checkpoint(str(tmp_path / "g.pt"), spec, Generator(spec), Discriminator(spec), {"note": "test"})
    return tmp_path / "g.pt", data
