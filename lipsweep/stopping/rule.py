"""The IMP stopping rule (paper, Appendix B, Fig. 13): no clean image needed, only the per-level IMP loss.

Losses are first smoothed by a trailing mean over ``smooth`` levels (1 = raw). A *rise* at level i is
``loss[i] > loss[i-1] * (1 + tolerance)``; a tie or a smaller increase is not a rise
and ends a run of rises. The rule *fires* at the level that completes ``k`` consecutive rises. The chosen
ticket is the level where that run began, i.e. the last level before its first rise (the run's lowest
loss), shifted by ``offset`` and clamped to [0, fired level]. Pure functions of the loss sequence, so any
finished chain can be replayed under any rule (what the Optuna search does).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from lipsweep.core.errors import ConfigError


@dataclass(frozen=True)
class StopRule:
    k: int = 3
    tolerance: float = 0.0
    offset: int = 0
    smooth: int = 1

    def __post_init__(self) -> None:
        if isinstance(self.k, bool) or not isinstance(self.k, int) or self.k < 1:
            raise ConfigError("stop.k", f"must be an integer >= 1, got {self.k!r}")
        if not isinstance(self.tolerance, (int, float)) or self.tolerance < 0:
            raise ConfigError("stop.tolerance", f"must be a number >= 0, got {self.tolerance!r}")
        if isinstance(self.offset, bool) or not isinstance(self.offset, int):
            raise ConfigError("stop.offset", f"must be an integer, got {self.offset!r}")
        if isinstance(self.smooth, bool) or not isinstance(self.smooth, int) or self.smooth < 1:
            raise ConfigError("stop.smooth", f"must be an integer >= 1, got {self.smooth!r}")

    def smoothed(self, losses: Sequence[float]) -> list[float]:
        """Trailing mean over ``smooth`` levels; uses only levels already seen, so it can run live."""
        return [sum(losses[max(0, i - self.smooth + 1):i + 1]) / (i + 1 - max(0, i - self.smooth + 1))
                for i in range(len(losses))]

    def fired_at(self, losses: Sequence[float]) -> int | None:
        """The first level that completes ``k`` consecutive rises, or None."""
        losses = self.smoothed(losses) if self.smooth > 1 else losses
        run = 0
        for i in range(1, len(losses)):
            run = run + 1 if losses[i] > losses[i - 1] * (1.0 + self.tolerance) else 0
            if run >= self.k:
                return i
        return None

    def describe(self) -> str:
        """The rule in words, as the stop-rule search prints it."""
        rises = "rises" if self.tolerance == 0 else f"rises of more than {100 * self.tolerance:.1f}%"
        smooth = "" if self.smooth == 1 else f" (averaged over the last {self.smooth} levels)"
        shift = "" if self.offset == 0 else f", shifted by {self.offset:+d} level{'s' * (abs(self.offset) > 1)}"
        return (f"stop after k={self.k} {rises} in a row of the IMP loss{smooth}; return the level before the first "
                f"rise{shift}")

    def chosen(self, losses: Sequence[float]) -> int | None:
        """The ticket the rule returns, or None while it has not fired."""
        fired = self.fired_at(losses)
        if fired is None:
            return None
        return min(max(fired - self.k + self.offset, 0), fired)
