"""Algorithm versions: a key names the code that computed a result, not only its config.

Every module whose code decides a stored number declares ``ALGORITHM = n`` beside that code and raises it
in the same commit that changes its results; ``tests/test_versions.py`` pins a small output of each such
module and fails when the output changes while the number did not. A store or run key holds the versions of
the modules its result depends on (``PRODUCTS``), so an edited module yields new keys, and nothing computed
by the old code is ever served as the new code's. Version 1 is the code the keys were pinned with before
versions existed and stays out of the payload, so stores made then keep their keys.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import re
import subprocess
import sys
from functools import cache
from pathlib import Path

# What each kind of stored result is computed by (a key's payload already holds the keys it builds on:
# a chain key holds its dense key, an evaluation its mask and dense key).
PRODUCTS: dict[str, tuple[str, ...]] = {
    "dense": ("images", "tasks", "priors.base", "priors.dip", "priors.deep_decoder", "fit", "outputs", "metrics",
              "trunk"),
    "target": ("targets",),  # a dense run fitted to another target than the image itself (Fig. 10)
    "chain": ("pruning", "masks", "chains"),
    "evaluation": ("transfer",),
    "gan": ("generators", "priors.pggan", "gan_train", "gan", "latent", "tasks", "images", "pruning", "metrics"),
    "classify": ("classify_data", "classifier", "classify", "pruning", "priors.base", "priors.dip"),
}
MODULES = tuple(sorted({m for mods in PRODUCTS.values() for m in mods}))
# Where each module of PRODUCTS lives (issue 25 moved them into subpackages): the logical names stay, since
# they are what keys and the ``lipsweep.code`` tag hold.
LOCATIONS: dict[str, str] = {
    "images": "problems.images", "tasks": "problems.tasks", "targets": "problems.targets",
    "metrics": "problems.metrics", "fit": "fitting.fit", "outputs": "fitting.outputs", "latent": "fitting.latent",
    "trunk": "lottery.trunk", "chains": "lottery.chains", "transfer": "lottery.transfer",
    "pruning": "pruning.methods", "masks": "pruning.masks", "generators": "kinds.gan.generators",
    "gan_train": "kinds.gan.train", "gan": "kinds.gan.kind", "classify_data": "kinds.classify.data",
    "classifier": "kinds.classify.model", "classify": "kinds.classify.kind",
}


def version(module: str) -> int:
    """``lipsweep.<module>.ALGORITHM``: the loaded module's, else read from its source, so that naming the
    code (every run's tags, every key) imports no torch into a driver that fits nothing."""
    name = f"lipsweep.{LOCATIONS.get(module, module)}"
    if name in sys.modules:
        return int(sys.modules[name].ALGORITHM)
    found = re.search(r"^ALGORITHM = (\d+)\b", Path(importlib.util.find_spec(name).origin).read_text(), re.M)
    return int(found.group(1)) if found else int(importlib.import_module(name).ALGORITHM)


def versions(*products: str) -> dict[str, int]:
    """The versions of every module the given products depend on (all modules when none is named)."""
    mods = sorted({m for p in products for m in PRODUCTS[p]}) if products else MODULES
    return {m: version(m) for m in mods}


def code_part(*products: str) -> dict[str, dict[str, int]]:
    """What enters a key payload: the versions above 1 (none: an empty dict, the key is as before)."""
    bumped = {m: v for m, v in versions(*products).items() if v != 1}
    return {"code": bumped} if bumped else {}


@cache
def git_commit(where: str | None = None) -> tuple[str | None, bool]:
    """The checkout's commit and whether it has uncommitted changes (None when not a git checkout)."""
    root = where or str(Path(__file__).resolve().parent)
    env = {**os.environ, "GIT_OPTIONAL_LOCKS": "0"}
    try:
        head = subprocess.run(["git", "-C", root, "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10,
                              env=env)
        if head.returncode != 0:
            return None, False
        dirty = subprocess.run(["git", "-C", root, "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10, env=env)
    except (OSError, subprocess.SubprocessError):
        return None, False
    return head.stdout.strip(), bool(dirty.stdout.strip())


def package_version() -> str:
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as dist_version

    try:
        return dist_version("lipsweep")
    except PackageNotFoundError:
        return "unknown"
