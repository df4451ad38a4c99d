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
class Claim:
    """The paper's claim a report reads its result against: each other value of the primary axis vs
    ``baseline`` in the report metric, paired by seed and level. ``expect``: what the paper says the others
    do, "better", "worse" or "not better" (than the baseline); ``paper_gap``: the paper's numbers where it
    has them, sparsity -> {primary value: other - baseline}; ``tolerance``: a smaller gap counts as none."""

    text: str
    baseline: object
    expect: str
    paper_gap: Mapping[float, Mapping[str, float]] = field(default_factory=dict)
    tolerance: float = 0.1
    others: tuple[object, ...] = ()  # the primary values the claim is about (empty: every other value)


@dataclass(frozen=True)
class Recipe:
    """What an experiment is compared by: line series, panel facets, and which outputs it needs.

    ``primary``: the paper's legend (one line per value, the first series where None), named by ``names``
    (value as text -> legend label); every other series or facet axis that varies becomes panels. ``main``:
    the main arm's values of the other axes (the trial defaults where absent), what the visual grid shows."""

    series: tuple[str, ...] = ("method",)
    facet: tuple[str, ...] = ("image", "task")
    parts: tuple[str, ...] = ("curves", "table", "visual_grid")
    all_kinds: bool = False  # curves and tables over every trial (evaluations too), not only the chains
    options: Mapping[str, object] = field(default_factory=dict)  # a part's settings, e.g. fft_sparsities
    primary: str | None = None
    names: Mapping[str, str] = field(default_factory=dict)
    main: Mapping[str, object] = field(default_factory=dict)
    claim: Claim | None = None

    def primary_axis(self, frame: pd.DataFrame) -> str | None:
        """The line axis: ``primary``, else the first series the sweep logged."""
        axes = [a for a in ((self.primary,) if self.primary else ()) + self.series if a in frame]
        return axes[0] if axes else None


@dataclass
class Report:
    """The report folder and its sections in order (title, one sentence, files), which index.md shows."""

    out: Path
    sections: list[tuple[str, str, list[Path]]] = field(default_factory=list)
    linked: set[Path] = field(default_factory=set)  # markdown files index.md links to without printing them
    reading: str = ""  # the paragraph index.md leads with: the result next to the paper's claim

    def add(self, title: str, sentence: str, files: list[Path], linked: tuple[Path, ...] = ()) -> None:
        self.sections.append((title, sentence, files))
        self.linked.update(linked)

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
