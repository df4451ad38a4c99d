"""The ticket workspace: one trunk store, the trunks built from it, and every fit counted and audited.

What runs a chain is ``chains.py``, what evaluates a mask elsewhere is ``transfer.py``, how a mask is made
is the ``pruning.METHODS`` registry, and a level's record is ``records.LevelRecord``. ``Tickets`` is what
they share: the store, the fit ledger (``fits`` counts fits actually run; loads cost none) and the
check-lock-check that makes every level computed at most once across processes.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from . import chains, transfer
from .config import ChainConfig
from .fit import FitResult, fit_many
from .masks import MaskSet
from .platforms import computing
from .priors import PRIORS
from .records import LevelRecord, per_image, reported_metrics
from .stopping import StopRule
from .store import SCHEMA, TrunkStore
from .trunk import Trunk, build_trunk


@dataclass
class ChainResult:
    records: list[LevelRecord]
    stop_fired_at: int | None
    stop_chosen: int | None
    fits: int


class Tickets:
    """Finds, stores and evaluates tickets through one trunk store."""

    def __init__(self, store: TrunkStore):
        self.store = store
        self.fits = 0
        self._trunks: dict[str, Trunk] = {}
        self.loaded: dict[str, object] = {}  # other kinds' read-once inputs (a generator checkpoint, its data)
        self.on_step: Callable[[int, int], None] | None = None  # (iteration, iterations) of every DIP fit: progress
        old = store.claim_schema()
        if old is not None:
            print(f"lipsweep: note: store {store.root} holds results of key schema {old}; they are not read "
                  f"(schema {SCHEMA} keys images by content and draws each image's own noise)", file=sys.stderr)

    def context(self, cfg: ChainConfig) -> Trunk:
        """The trunk for ``cfg``'s dense key (built once per workspace)."""
        key = cfg.dense_key
        if key not in self._trunks:
            self._trunks[key] = build_trunk(cfg)
        return replace(self._trunks[key], cfg=cfg)

    def fit(self, trunk: Trunk, state: dict[str, torch.Tensor], mask: MaskSet | None, *,
            targets: list | None = None, snapshot_at: tuple[int, ...] = (),
            iters: int | None = None) -> tuple[list[FitResult], torch.nn.Module]:
        """Every fit goes through here: counted, and logged to the store's ``fits.log`` audit trail."""
        cfg = trunk.cfg
        model = trunk.model(state)
        fcfg = cfg.run.fit if iters is None else replace(cfg.run.fit, iters=iters)
        step = self.on_step
        with computing(cfg.run.threads, trunk.inputs[0].device.type, cfg.run.deterministic) as platform:
            results = fit_many(model, trunk.inputs, targets or trunk.targets, fcfg, seed=cfg.run.seed,
                               mask=mask.masks if mask is not None else None, snapshot_at=snapshot_at,
                               callback=None if step is None else lambda s: step(s.iteration, fcfg.iters))
        results[0].extra["platform"] = platform.as_dict()
        self.fits += 1
        start = "theta0" if state is trunk.theta0 else f"rewind_{cfg.rewind_iter}"
        self.store.log_fit({"dense": cfg.dense_key, "mask": mask.hash if mask is not None else "dense",
                            "start": start, "iters": fcfg.iters, "target": "imp" if targets is None else "observation",
                            "seconds": round(results[0].seconds, 3), "platform": platform.as_dict()})
        return results, model

    def shown(self, trunk: Trunk, state: dict, mask: MaskSet | None, imp: list[FitResult],
              iters: int | None = None) -> list[FitResult]:
        """The reported fit: the IMP fit itself, or (imp_target clean) a second fit on the observations."""
        if trunk.cfg.imp_target == "observation":
            return imp
        return self.fit(trunk, state, mask, targets=trunk.problems, iters=iters)[0]

    def once(self, directory: Path, lock: str, compute: Callable[[], LevelRecord]) -> LevelRecord:
        """The record in ``directory``, computed at most once across processes: check, lock, check again."""
        found = self.store.read_record(directory)
        if found is None:
            with self.store.lock(lock):
                found = self.store.read_record(directory)
                if found is None:
                    return compute()
        return LevelRecord.from_dict(found)

    def record(self, level: int, cfg: ChainConfig, mask: MaskSet, imp: list[FitResult],
               shown: list[FitResult]) -> LevelRecord:
        """A fitted level's record (its images are written by ``write_level``)."""
        metrics = [r.metrics for r in shown]
        params = PRIORS.get(cfg.run.model.kind).params(cfg.run.model)
        return LevelRecord(
            level=level, method=cfg.method if level else "dense", rewind=cfg.rewind,
            rewind_iter=cfg.rewind_iter if level else 0, density=mask.density, sparsity=mask.sparsity,
            kept=mask.kept, total=mask.total, mask_hash=mask.hash, layer_densities=mask.layer_densities(),
            imp_loss=imp[0].metrics["loss_final"],
            seconds=sum(r.seconds for r in {id(r): r for r in imp + shown}.values()),
            metrics={**reported_metrics(metrics), "params": params, "nonzero_params": params - (mask.total - mask.kept)},
            per_image=per_image(cfg.images, metrics), platform=imp[0].extra.get("platform"))

    def write_level(self, directory: Path, rec: LevelRecord, shown: list[FitResult]) -> LevelRecord:
        """Images (shown, final iterate, oracle peak; at level 0 the truth and the observation; SGLD's posterior
        mean and spread), outputs at chosen iterations, the curves, then the record that marks it done."""
        first = shown[0]
        images = {"restored": first.restored, "final": first.final, "peak": first.best}
        if rec.level == 0:
            images.update(clean=first.extra["clean"], observation=first.extra["observation"])
        images.update(first.posterior_images())
        self.store.write_level_files(directory, images, [r.curve for r in shown], first.extra.get("outputs_at"))
        rec = replace(rec, where=self.store.relative(directory))
        self.store.write_record(directory, rec.to_dict())
        return rec

    # -- the operations, implemented in chains.py and transfer.py --------------------------------------
    def dense(self, cfg: ChainConfig) -> LevelRecord:
        return chains.dense(self, cfg)

    def level(self, cfg: ChainConfig, level: int) -> LevelRecord:
        return chains.level(self, cfg, level)

    def mask(self, cfg: ChainConfig, level: int) -> MaskSet:
        return chains.mask(self, cfg, level)

    def rewind_state(self, cfg: ChainConfig, trunk: Trunk) -> dict[str, torch.Tensor]:
        return chains.rewind_state(self, cfg, trunk)

    def iter_levels(self, cfg: ChainConfig, levels: int, stop: StopRule | None = None,
                    keep_going: bool = False) -> Iterator[LevelRecord]:
        return chains.iter_levels(self, cfg, levels, stop, keep_going)

    def chain(self, cfg: ChainConfig, levels: int, stop: StopRule | None = None, keep_going: bool = False,
              on_level: Callable[[LevelRecord], None] | None = None) -> ChainResult:
        """Levels 0..``levels``, loading what exists; the result says where the stop rule fired and chose."""
        fits_before = self.fits
        records = []
        for rec in self.iter_levels(cfg, levels, stop, keep_going):
            records.append(rec)
            if on_level is not None:
                on_level(rec)
        last = records[-1]
        return ChainResult(records, last.stop_fired_at, last.stop_chosen, self.fits - fits_before)

    def evaluate(self, mask: MaskSet, target: ChainConfig) -> LevelRecord:
        return transfer.evaluate(self, mask, target)
