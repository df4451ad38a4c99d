"""The types every report part shares: how an experiment is compared (``Recipe``), the report being written
(``Report``) and what a part reads (``Inputs``). They live apart from ``report`` so that the parts import
them without importing the report that runs the parts."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

if TYPE_CHECKING:
    from .runs import Runs


@dataclass(frozen=True)
class Recipe:
    """What an experiment is compared by: line series, panel facets, and which outputs it needs."""

    series: tuple[str, ...] = ("method",)
    facet: tuple[str, ...] = ("image", "task")
    parts: tuple[str, ...] = ("curves", "table", "visual_grid")
    all_kinds: bool = False  # curves and tables over every trial (evaluations too), not only the chains
    options: Mapping[str, object] = field(default_factory=dict)  # a part's settings, e.g. fft_sparsities


@dataclass
class Report:
    """The report folder and its sections in order (title, one sentence, files), which index.md shows."""

    out: Path
    sections: list[tuple[str, str, list[Path]]] = field(default_factory=list)

    def add(self, title: str, sentence: str, files: list[Path]) -> None:
        self.sections.append((title, sentence, files))

    @property
    def files(self) -> list[Path]:
        return [f for _, _, fs in self.sections for f in fs]


@dataclass(frozen=True)
class Inputs:
    """What a report part reads: the sweep's runs, its tidy table (``frame``: every row; ``rows``: what curves and
    tables read, the chains or, with the recipe's ``all_kinds``, every trial), options."""

    rep: Report
    runs: Runs
    frame: pd.DataFrame
    rows: pd.DataFrame
    recipe: Recipe
    name: str
    metric: str
    sparsity: float
    delta: float = 0.5  # dB below dense a matching ticket may lose (Fig. 2's sparsest matching column)
