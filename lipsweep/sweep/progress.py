"""Progress a person can read: a bar with elapsed time and ETA (tqdm's) that moves within a level, not only
between levels. On a terminal it redraws in place; in a log (``ray job logs``, CI, a file) it writes one whole
line every ``every_s`` seconds instead of carriage returns."""

from __future__ import annotations

import sys
import time
from typing import TextIO

from tqdm import tqdm

BAR = "{l_bar}{bar}| {n:.1f}/{total:.0f} {unit} [{elapsed}<{remaining}{postfix}]"


class Progress:
    """``update(n, postfix)`` sets the amount done (fractions allowed: a level half fitted is 0.5)."""

    def __init__(self, total: float, desc: str, unit: str, quiet: bool = False, every_s: float = 30.0,
                 stream: TextIO | None = None):
        self.stream = stream or sys.stderr
        self.total, self.desc, self.unit, self.quiet, self.every_s = total, desc, unit, quiet, every_s
        self.start, self.last, self.n, self.postfix, self.shown = time.time(), 0.0, 0.0, "", None
        live = not quiet and hasattr(self.stream, "isatty") and self.stream.isatty()
        self.bar = tqdm(total=total, desc=desc, unit=unit, file=self.stream, dynamic_ncols=True, mininterval=0.5,
                        bar_format=BAR) if live else None

    def update(self, n: float, postfix: str = "", force: bool = False) -> None:
        self.n, self.postfix = min(max(n, 0.0), self.total), postfix
        if self.bar is not None:
            self.bar.n = self.n
            self.bar.set_postfix_str(postfix, refresh=False)
            self.bar.refresh()
        elif not self.quiet and (force or time.time() - self.last >= self.every_s):
            self.last, self.shown = time.time(), self.n
            print(self.line(), file=self.stream, flush=True)

    def line(self) -> str:
        """The bar as one line: ``desc: 45%|####  | 4.5/10 level [00:12<00:15, postfix]``."""
        return tqdm.format_meter(self.n, self.total, time.time() - self.start, ncols=100, prefix=self.desc,
                                 unit=self.unit, postfix=self.postfix or None, bar_format=BAR)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        elif not self.quiet and self.shown != self.n:  # the last state, unless that line was just written
            print(self.line(), file=self.stream, flush=True)
