"""What runs a chain (Algorithms 1 and 2): levels, rewinding, successor masks and the stop rule.

Level 0 is the dense fit from theta_0, shared by every chain with the same dense key; level L trains, from
theta_rewind, level L's mask for ``level_iters``: the full N (Algorithm 1 trains N epochs per round), or the
N - j that remain after rewinding to j (``rewind_budget: remaining``). Each
level's fit *is* the isolated training of its mask, so its record is the evaluation. One-shot methods
(random, SNIP, SynFlow, ...) keep exactly as many weights as IMP's level L, so curves line up.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from lipsweep.core.errors import ConfigError, check_int
from lipsweep.core.paths import config_of, mask_of
from lipsweep.core.records import LevelRecord
from lipsweep.lottery.chain import ChainConfig
from lipsweep.lottery.trunk import Trunk
from lipsweep.problems.tasks import stable_seed
from lipsweep.pruning.masks import MaskSet
from lipsweep.pruning.methods import METHODS, MaskRequest, level_counts, prunable_total
from lipsweep.stopping.rule import StopRule

# The version of this module's results (lipsweep.core.versions): raise it in the commit that changes them.
ALGORITHM = 1

if TYPE_CHECKING:
    import torch

    from lipsweep.lottery.store import TrunkStore
    from lipsweep.lottery.workspace import Workspace

STANDARD_REWINDS = (0.05, 0.10, 0.20)  # the paper's ablation: saved with every dense run


def dense(ws: Workspace, cfg: ChainConfig) -> LevelRecord:
    """Level 0: theta_0, the rewind states and the final weights, fitted once per dense key."""
    d = ws.store.dense_dir(cfg.dense_key)
    return ws.once(d, f"dense-{cfg.dense_key}", lambda: _dense(ws, cfg, d))


def _dense(ws: Workspace, cfg: ChainConfig, d: Path) -> LevelRecord:
    trunk, paths = ws.context(cfg), ws.store.paths
    ws.store.write_json(config_of(d), cfg.dense_payload())
    ws.store.write_state(paths.theta0(cfg.dense_key), trunk.theta0)
    rewinds = {round(f * cfg.run.fit.iters) for f in (*STANDARD_REWINDS, cfg.rewind)} - {0}
    detector = cfg.run.fit.early_stop != "none"
    imp, model = ws.fit(trunk, trunk.theta0, None, snapshot_at=tuple(sorted(rewinds)), keep_detected=detector)
    for it, state in imp[0].extra["snapshots"].items():
        ws.store.write_state(paths.rewind_state(cfg.dense_key, it), state)
    if detector:  # what IMP under early stopping prunes at level 1 (es_mask)
        ws.store.write_state(paths.detected_state(cfg.dense_key), imp[0].extra["detected_state"])
    ws.store.write_state(paths.final_state(cfg.dense_key), model.state_dict())
    shown = ws.shown(trunk, trunk.theta0, None, imp)
    return ws.write_level(d, ws.record(0, cfg, MaskSet.dense(model), imp, shown), shown)


def rewind_state(ws: Workspace, cfg: ChainConfig, trunk: Trunk) -> dict[str, torch.Tensor]:
    """theta_j: saved by the dense run, or replayed (the dense fit is deterministic) for a new j."""
    j = cfg.rewind_iter
    if j == 0:
        return trunk.theta0
    if cfg.rewind_source == "shared" and cfg.run.seed != 0:
        return _shared_rewind(ws, cfg)
    path = ws.store.paths.rewind_state(cfg.dense_key, j)
    return ws.once_value(lambda: ws.store.read_state(path), f"dense-{cfg.dense_key}-rewind-{j}",
                         lambda: _replay(ws, trunk, j, path))


def _shared_rewind(ws: Workspace, cfg: ChainConfig) -> dict[str, torch.Tensor]:
    """Seed 0's theta_j for every seed (``rewind_source: shared``): the reference code rewinds all three inits
    to one file, ``DIP_model_rewind_{5,10,20}.pth`` (Rewind_IMP.py:113-118), although level 0 trained from each
    seed's own theta_0; so theta_j then lies off the trajectory the masks came from."""
    source = replace(cfg, run=replace(cfg.run, seed=0), rewind_source="own")
    dense(ws, source)
    return rewind_state(ws, source, ws.context(source))


def _replay(ws: Workspace, trunk: Trunk, j: int, path: Path) -> dict[str, torch.Tensor]:
    imp, _ = ws.fit(trunk, trunk.theta0, None, snapshot_at=(j,), iters=j)
    state = imp[0].extra["snapshots"][j]
    ws.store.write_state(path, state)
    return state


def keep_count(cfg: ChainConfig, any_mask: MaskSet, level: int) -> int:
    """Weights kept at ``level``: the chain's target sparsity grid, or ``prune_fraction`` of the rest per level.
    ``any_mask`` of the network gives the layer sizes (what it keeps does not matter)."""
    total = prunable_total(any_mask, cfg.frozen)
    if not cfg.sparsities:
        return level_counts(total, level, cfg.prune_fraction)[level]
    if level > len(cfg.sparsities):
        raise ConfigError("levels", f"the chain's sparsities name {len(cfg.sparsities)} levels; got level {level}")
    return round(total * (1.0 - cfg.sparsities[level - 1]))


def mask(ws: Workspace, cfg: ChainConfig, level: int) -> MaskSet:
    """The mask of ``level``: from the store, or made (and stored) by the chain's method."""
    directory = ws.store.level_dir(cfg.chain_key, level)
    found = ws.store.read_mask(directory)
    if found is not None:
        return found
    trunk = ws.context(cfg)
    dense_mask = MaskSet.dense(trunk.model(trunk.theta0))
    if level == 0:
        return dense_mask.with_meta(method="dense", level=0)
    meta = {"method": cfg.method, "level": level, "image": cfg.run.problem.image, "task": cfg.run.problem.task,
            "seed": cfg.run.seed, "chain": cfg.chain_key, "multi_images": list(cfg.multi_images)}
    method = METHODS.get(cfg.method)
    if method.sequential and level > 1:  # level - 1 writes this level's mask when it finishes
        return _successor(ws, cfg, level, directory)
    if method.sequential:  # level 1: prune the dense fit's final weights
        final = _final_state(ws, cfg)
        made = MaskSet(method.successor(trunk.model(final), dense_mask, keep_count(cfg, dense_mask, 1), cfg.frozen),
                       {"parent": dense_mask.hash})
    else:
        made = _one_shot(ws, cfg, trunk, dense_mask, level)
    result = MaskSet(dict(made.masks), {**meta, **made.meta})
    ws.store.write_mask(directory, result)
    return result


def _successor(ws: Workspace, cfg: ChainConfig, lvl: int, directory: Path) -> MaskSet:
    """Level ``lvl``'s IMP mask, written by level ``lvl - 1``'s fit; if it was lost (damaged and moved aside)
    that level is fitted again, deterministically, and writes it again."""
    for _ in iter_levels(ws, cfg, lvl - 1):
        pass
    found = ws.store.read_mask(directory)
    if found is None:
        ws.store.discard_record(ws.store.level_dir(cfg.chain_key, lvl - 1), f"level {lvl}'s mask is missing")
        level(ws, cfg, lvl - 1)
        found = ws.store.read_mask(directory)
    if found is None:
        raise RuntimeError(f"chain {cfg.chain_key}: level {lvl - 1} finished without its successor mask")
    return found


def _final_state(ws: Workspace, cfg: ChainConfig) -> dict[str, torch.Tensor]:
    """The dense fit's final weights (level 1 prunes them; with ``es_mask`` its weights at the detected
    iteration); refits level 0 if they were lost."""
    dense(ws, cfg)
    paths = ws.store.paths
    path = paths.detected_state(cfg.dense_key) if cfg.es_mask else paths.final_state(cfg.dense_key)
    final = ws.store.read_state(path)
    if final is None:
        ws.store.discard_record(ws.store.dense_dir(cfg.dense_key), "its final weights are missing")
        dense(ws, cfg)
        final = ws.store.read_state(path)
    return final


def _one_shot(ws: Workspace, cfg: ChainConfig, trunk: Trunk, dense_mask: MaskSet, level: int) -> MaskSet:
    req = MaskRequest(level=level, keep=keep_count(cfg, dense_mask, level), seed=stable_seed(cfg.method, cfg.run.seed, level),
                      dense=dense_mask, frozen=cfg.frozen, model=lambda: trunk.model(trunk.theta0),
                      problems=trunk.problems, inputs=trunk.inputs,
                      profile=lambda other: mask(ws, replace(cfg, method=other), level),
                      options={name: getattr(cfg, name) for name in METHODS.get(cfg.method).key_fields})
    made = METHODS.get(cfg.method).make(req)
    return made if isinstance(made, MaskSet) else MaskSet(made)


def level(ws: Workspace, cfg: ChainConfig, lvl: int) -> LevelRecord:
    """One level's record, fitted only if the store lacks it."""
    if lvl == 0:
        return dense(ws, cfg)
    directory = ws.store.level_dir(cfg.chain_key, lvl)
    return ws.once(directory, f"chain-{cfg.chain_key}-{lvl}", lambda: _level(ws, cfg, lvl, directory))


def _level(ws: Workspace, cfg: ChainConfig, lvl: int, directory: Path) -> LevelRecord:
    m = mask(ws, cfg, lvl)
    trunk = ws.context(cfg)
    state = rewind_state(ws, cfg, trunk)
    imp, model = ws.fit(trunk, state, m, iters=cfg.level_iters, keep_detected=cfg.es_mask)
    method = METHODS.get(cfg.method)
    if method.sequential and (not cfg.sparsities or lvl < len(cfg.sparsities)):
        # the successor's mask needs these weights (es_mask: those at the detected iteration); stored before the record
        ranked = trunk.model(imp[0].extra["detected_state"]) if cfg.es_mask else model
        nxt = method.successor(ranked, m, keep_count(cfg, m, lvl + 1), cfg.frozen)
        meta = {**m.meta, "level": lvl + 1, "parent": m.hash}
        ws.store.write_mask(ws.store.level_dir(cfg.chain_key, lvl + 1), MaskSet(nxt, meta))
    shown = ws.shown(trunk, state, m, imp, cfg.level_iters)
    return ws.write_level(directory, ws.record(lvl, cfg, m, imp, shown), shown)


def iter_levels(ws: Workspace, cfg: ChainConfig, levels: int, stop: StopRule | None = None,
                keep_going: bool = False) -> Iterator[LevelRecord]:
    """Levels 0..``levels`` as each is loaded or fitted, each with the stop rule's verdict so far.
    With ``stop``, halts when the rule fires unless ``keep_going``."""
    check_int("levels", levels, 0)
    ws.store.ensure_json(config_of(ws.store.chain_dir(cfg.chain_key)), cfg.chain_payload())
    losses: list[float] = []
    fired = chosen = None
    for lvl in range(levels + 1):
        rec = level(ws, cfg, lvl)
        losses.append(rec.imp_loss)
        if stop is not None and fired is None:
            fired, chosen = stop.fired_at(losses), stop.chosen(losses)
        yield replace(rec, stop_fired_at=fired, stop_chosen=chosen)
        if fired is not None and not keep_going:
            return


def stored(store: TrunkStore, cfg: ChainConfig, levels: int) -> bool:
    """Whether serving levels 0..``levels`` of ``cfg`` writes nothing to the store (so a read-only one can
    serve them): every level's record and mask and the chain's config are there under this schema, and no
    ``--recompute`` replaces them."""
    if store.fresh_since is not None or not store.schema_current():
        return False
    dirs = [store.level_dir(cfg.chain_key, lvl) for lvl in range(1, levels + 1)]
    return (store.has_record(store.dense_dir(cfg.dense_key)) and all(store.has_record(d) for d in dirs)
            and all(mask_of(d).with_suffix(".json").is_file() for d in dirs)
            and store.holds_json(config_of(store.chain_dir(cfg.chain_key)), cfg.chain_payload()))
