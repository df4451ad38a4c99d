"""Evaluating a mask found elsewhere (Figs. 5, 14): fit a target image/task from its theta_rewind under it.

The evaluation is keyed by the mask's content hash and the target's dense key, so a mask transferred to
the same target twice, from any chain or sweep, is fitted once.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from . import chains
from .config import ChainConfig
from .masks import MaskSet
from .paths import config_of
from .records import LevelRecord
from .store import SCHEMA, content_key
from .versions import code_part

# The version of this module's results (lipsweep.versions): raise it in the commit that changes them.
ALGORITHM = 1

if TYPE_CHECKING:
    from .tickets import Tickets


def evaluate(tk: Tickets, mask: MaskSet, target: ChainConfig) -> LevelRecord:
    key = content_key({"schema": SCHEMA, "mask": mask.hash, "dense": target.dense_key, "rewind": float(target.rewind),
                       "iters": target.level_iters, **code_part("evaluation")})
    directory = tk.store.eval_dir(key)
    return tk.once(directory, f"eval-{key}", lambda: _evaluate(tk, mask, target, directory))


def _evaluate(tk: Tickets, mask: MaskSet, target: ChainConfig, directory: Path) -> LevelRecord:
    trunk = tk.context(target)
    mask.check_fits(trunk.model(trunk.theta0))
    state = chains.rewind_state(tk, target, trunk)
    imp, _ = tk.fit(trunk, state, mask, iters=target.level_iters)
    shown = tk.shown(trunk, state, mask, imp, target.level_iters)
    rec = tk.record(int(mask.meta.get("level", 0)), target, mask, imp, shown)
    rec = replace(rec, method=str(mask.meta.get("method", "given")), source=dict(mask.meta))
    tk.store.write_json(config_of(directory), {"mask": mask.hash, "target": target.dense_payload(),
                                               "rewind": target.rewind})
    return tk.write_level(directory, rec, shown)
