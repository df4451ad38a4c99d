"""Evaluating a mask found elsewhere (Figs. 5, 14): fit a target image/task from its theta_rewind under it.

The evaluation is keyed by the mask's content hash and the target's dense key, so a mask transferred to
the same target twice, from any chain or sweep, is fitted once.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from lipsweep.core.keys import SCHEMA, content_key
from lipsweep.core.paths import config_of
from lipsweep.core.records import LevelRecord
from lipsweep.core.versions import code_part
from lipsweep.lottery import chains
from lipsweep.lottery.chain import ChainConfig
from lipsweep.pruning.masks import MaskSet

# The version of this module's results (lipsweep.core.versions): raise it in the commit that changes them.
ALGORITHM = 1

if TYPE_CHECKING:
    from lipsweep.lottery.workspace import Workspace


def eval_key(mask_hash: str, target: ChainConfig) -> str:
    """The one owner of an evaluation's key (``lipsweep show`` prices stored evaluations by it)."""
    return content_key({"schema": SCHEMA, "mask": mask_hash, "dense": target.dense_key,
                        "rewind": float(target.rewind), "iters": target.level_iters, **code_part("evaluation")})


def evaluate(ws: Workspace, mask: MaskSet, target: ChainConfig) -> LevelRecord:
    key = eval_key(mask.hash, target)
    directory = ws.store.eval_dir(key)
    return ws.once(directory, f"eval-{key}", lambda: _evaluate(ws, mask, target, directory))


def _evaluate(ws: Workspace, mask: MaskSet, target: ChainConfig, directory: Path) -> LevelRecord:
    trunk = ws.context(target)
    mask.check_fits(trunk.model(trunk.theta0))
    state = chains.rewind_state(ws, target, trunk)
    imp, _ = ws.fit(trunk, state, mask, iters=target.level_iters)
    shown = ws.shown(trunk, state, mask, imp, target.level_iters)
    rec = ws.record(int(mask.meta.get("level", 0)), target, mask, imp, shown)
    rec = replace(rec, method=str(mask.meta.get("method", "given")), source=dict(mask.meta))
    ws.store.write_json(config_of(directory), {"mask": mask.hash, "target": target.dense_payload(),
                                               "rewind": target.rewind})
    return ws.write_level(directory, rec, shown)
