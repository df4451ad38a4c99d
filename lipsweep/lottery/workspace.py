"""The lottery workspace: one trunk store, the trunks built from it, and every fit counted and audited.

Every trial kind's lottery (DIP chains and transfers here, generator and classifier chains in ``kinds/``)
stands on this one core: the store handle, the fit ledger (``fits`` counts fits actually run; loads cost
none, and each fit is one line of the store's ``fits.log``), the check-lock-check that makes every level,
mask and state computed at most once across processes, record building from a mask, and level writing
(files first, the record last: its presence marks the level done). Nothing here knows a chain's algorithm:
``chains.py`` and ``transfer.py`` call down into it, never the other way.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from lipsweep.core.keys import SCHEMA
from lipsweep.core.paths import config_of
from lipsweep.core.platforms import computing
from lipsweep.core.records import CLEAN_FIT, LevelRecord, per_image, reported_metrics
from lipsweep.lottery.chain import ChainConfig
from lipsweep.lottery.store import TrunkStore
from lipsweep.lottery.trunk import Trunk, build_trunk
from lipsweep.priors import PRIORS
from lipsweep.pruning.masks import MaskSet

if TYPE_CHECKING:
    import torch

    from lipsweep.fitting.fit import FitResult

T = TypeVar("T")


def mask_fields(mask: MaskSet) -> dict[str, object]:
    """What every level record says about its mask (any kind: DIP, generator, classifier)."""
    return {"density": mask.density, "sparsity": mask.sparsity, "kept": mask.kept, "total": mask.total,
            "mask_hash": mask.hash, "layer_densities": mask.layer_densities()}


class Workspace:
    """Finds, stores and counts every computation of a trial through one trunk store."""

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

    # -- at most once ----------------------------------------------------------------------------------
    def once_value(self, read: Callable[[], T | None], lock: str, compute: Callable[[], T]) -> T:
        """What ``read`` finds, else ``compute``'s result, computed at most once across processes: check, lock,
        check again (``compute`` stores what ``read`` reads)."""
        found = read()
        if found is None:
            with self.store.lock(lock):
                found = read()
                if found is None:
                    return compute()
        return found

    def once(self, directory: Path, lock: str, compute: Callable[[], LevelRecord]) -> LevelRecord:
        """The level record in ``directory``, computed at most once across processes."""
        found = self.once_value(lambda: self.store.read_record(directory), lock, compute)
        return found if isinstance(found, LevelRecord) else LevelRecord.from_dict(found)

    def nested_mask(self, directory: Path, lock: str, previous: Callable[[], MaskSet],
                    make: Callable[[MaskSet], MaskSet], config: Callable[[], Mapping[str, object]]) -> MaskSet:
        """Level L's mask of a nested chain (generator, classifier): from the store, else made from level L-1's
        mask (computed first, outside this level's lock) at most once across processes, with the chain's
        ``config()`` written beside it."""
        found = self.store.read_mask(directory)
        if found is not None:
            return found
        prev = previous()

        def compute() -> MaskSet:
            made = make(prev)
            self.store.write_json(config_of(directory.parent), dict(config()))
            self.store.write_mask(directory, made)
            return made

        return self.once_value(lambda: self.store.read_mask(directory), lock, compute)

    # -- the fit ledger ------------------------------------------------------------------------------------
    def count_fit(self, entry: Mapping[str, object]) -> None:
        """One fit actually run: counted, and appended to the store's ``fits.log`` audit trail."""
        self.fits += 1
        self.store.log_fit(dict(entry))

    def context(self, cfg: ChainConfig) -> Trunk:
        """The trunk for ``cfg``'s dense key (built once per workspace)."""
        key = cfg.dense_key
        if key not in self._trunks:
            self._trunks[key] = build_trunk(cfg)
        return replace(self._trunks[key], cfg=cfg)

    def fit(self, trunk: Trunk, state: dict[str, torch.Tensor], mask: MaskSet | None, *,
            targets: list | None = None, snapshot_at: tuple[int, ...] = (), iters: int | None = None,
            keep_detected: bool = False) -> tuple[list[FitResult], torch.nn.Module]:
        """A DIP fit of ``trunk`` from ``state`` under ``mask``, counted in the ledger."""
        from lipsweep.fitting.fit import fit_many

        cfg = trunk.cfg
        model = trunk.model(state)
        fcfg = cfg.run.fit if iters is None else replace(cfg.run.fit, iters=iters)
        step = self.on_step
        with computing(cfg.run.threads, trunk.inputs[0].device.type, cfg.run.deterministic) as platform:
            results = fit_many(model, trunk.inputs, targets or trunk.targets, fcfg, seed=cfg.run.seed,
                               mask=mask.masks if mask is not None else None, snapshot_at=snapshot_at,
                               keep_detected=keep_detected,
                               callback=None if step is None else lambda s: step(s.iteration, fcfg.iters))
        results[0].extra["platform"] = platform.as_dict()
        start = "theta0" if state is trunk.theta0 else f"rewind_{cfg.rewind_iter}"
        self.count_fit({"dense": cfg.dense_key, "mask": mask.hash if mask is not None else "dense", "start": start,
                        "iters": results[0].metrics["iters"], "target": "imp" if targets is None else "observation",
                        "seconds": round(results[0].seconds, 3), "platform": platform.as_dict()})
        return results, model

    def shown(self, trunk: Trunk, state: dict, mask: MaskSet | None, imp: list[FitResult],
              iters: int | None = None) -> list[FitResult]:
        """The reported fit: the IMP fit itself, or (imp_target clean) a second fit on the observations."""
        if trunk.cfg.imp_target == "observation":
            return imp
        return self.fit(trunk, state, mask, targets=trunk.problems, iters=iters)[0]

    # -- records and levels --------------------------------------------------------------------------------
    def record(self, level: int, cfg: ChainConfig, mask: MaskSet, imp: list[FitResult],
               shown: list[FitResult]) -> LevelRecord:
        """A fitted DIP level's record (its images are written by ``write_level``)."""
        metrics = [r.metrics for r in shown]
        params = PRIORS.get(cfg.run.model.kind).params(cfg.run.model)
        return LevelRecord(
            level=level, method=cfg.method if level else "dense", rewind=cfg.rewind,
            rewind_iter=cfg.rewind_iter if level else 0, **mask_fields(mask), imp_loss=imp[0].metrics["loss_final"],
            seconds=sum(r.seconds for r in {id(r): r for r in imp + shown}.values()),
            metrics={**reported_metrics(metrics), **_clean_fit(imp, shown), "params": params,
                     "nonzero_params": params - (mask.total - mask.kept)},
            per_image=per_image(cfg.images, metrics), platform=imp[0].extra.get("platform"))

    def finish(self, directory: Path, rec: LevelRecord, images: Mapping[str, object] | None = None,
               curves: Sequence[object] = (), outputs_at: Mapping | None = None,
               traces: Sequence[object] = ()) -> LevelRecord:
        """Write a level: its images, curves and early-stopping traces, then the record that marks it done."""
        self.store.write_level_files(directory, dict(images or {}), list(curves), outputs_at, list(traces))
        rec = replace(rec, where=self.store.relative(directory))
        self.store.write_record(directory, rec.to_dict())
        return rec

    def write_level(self, directory: Path, rec: LevelRecord, shown: list[FitResult]) -> LevelRecord:
        """A DIP level: shown, final iterate, oracle peak and peak-EMA images (at level 0 the truth and the observation;
        SGLD's posterior mean and spread; a detector's choice), outputs at chosen iterations, the curves and
        early-stopping traces, then the record."""
        first = shown[0]
        images = {"restored": first.restored, "final": first.final, "peak": first.best}
        if first.ema_peak is not None:
            images["ema_peak"] = first.ema_peak
        if rec.level == 0:
            images.update(clean=first.extra["clean"], observation=first.extra["observation"])
        images.update(first.posterior_images())
        if "es_image" in first.extra:
            images["early_stop"] = first.extra["es_image"]
        traces = [r.extra["es_trace"] for r in shown if "es_trace" in r.extra]
        return self.finish(directory, rec, images, [r.curve for r in shown], first.extra.get("outputs_at"), traces)


def _clean_fit(imp: list[FitResult], shown: list[FitResult]) -> dict[str, float]:
    """With imp_target clean the IMP fit is not the reported one: its own PSNR (the fit of the clean image,
    scored against it) is kept too, as ``clean_fit_*``, the reading of the reference's rewind script."""
    if imp is shown:
        return {}
    fitted = reported_metrics([r.metrics for r in imp])
    return {name: fitted[key] for key, name in CLEAN_FIT.items() if key in fitted}
