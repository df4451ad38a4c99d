"""Tickets: the operations trial kinds call, over one workspace (``workspace.py``: the store, the fit ledger,
check-lock-check, records and level writing): level 0, a level, a mask, a chain's levels with the stop rule's
verdict, and a mask evaluated on another target. What runs a chain is ``chains.py``, what evaluates a mask
elsewhere is ``transfer.py``, and how a mask is made is the ``pruning.METHODS`` registry.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

from lipsweep.core.records import LevelRecord
from lipsweep.lottery import chains, transfer
from lipsweep.lottery.chain import ChainConfig
from lipsweep.lottery.workspace import Workspace
from lipsweep.pruning.masks import MaskSet
from lipsweep.stopping.rule import StopRule


@dataclass
class ChainResult:
    records: list[LevelRecord]
    stop_fired_at: int | None
    stop_chosen: int | None
    fits: int


class Tickets(Workspace):
    """The ticket operations a trial kind uses, over one workspace: level 0, a level, a mask, the levels of a
    chain, and a mask evaluated on another target (``chains.py``, ``transfer.py``)."""

    def dense(self, cfg: ChainConfig) -> LevelRecord:
        return chains.dense(self, cfg)

    def level(self, cfg: ChainConfig, level: int) -> LevelRecord:
        return chains.level(self, cfg, level)

    def mask(self, cfg: ChainConfig, level: int) -> MaskSet:
        return chains.mask(self, cfg, level)

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
