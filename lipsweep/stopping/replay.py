"""Replaying finished IMP chains under a stop rule (paper Appendix B, Fig. 13): the rule reads only the
per-level IMP loss, so a chain computed once is replayed under any rule in microseconds; the clean image
enters only through the score (the chosen level's sparsity and PSNR change against dense). No Optuna here:
``search`` proposes the rules."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from lipsweep.stopping.rule import StopRule

NEVER = StopRule(k=10**9)  # fires on no chain: IMP runs to the last level, the baseline a rule must beat


GRID = tuple(StopRule(k=k, tolerance=t, offset=o, smooth=s)
             for s, o, k, t in itertools.product((1, 2, 3), (0, -1, 1, -2), range(1, 6), (0.0, 0.01, 0.02, 0.05, 0.1, 0.2)))


@dataclass(frozen=True)
class ChainTrace:
    """One finished chain as the rule and the score see it (PSNR is for scoring only)."""

    name: str
    image: str
    task: str
    seed: int
    sparsity: tuple[float, ...]
    imp_loss: tuple[float, ...]
    psnr: tuple[float, ...]


def trace_of(name: str, image: str, task: str, seed: int, records: Sequence[dict], metric: str) -> ChainTrace:
    """A chain's level records (as the store holds them) as a trace."""
    return ChainTrace(name, image, task, seed, tuple(r["sparsity"] for r in records),
                      tuple(r["imp_loss"] for r in records), tuple(r[metric] for r in records))


@dataclass(frozen=True)
class Score:
    sparsity: float
    psnr_loss: float
    objective: float

    def signed(self) -> dict:
        """For reading: the PSNR change vs dense in dB, positive = better than dense."""
        return {"sparsity": self.sparsity, "psnr_change_db": 0.0 - self.psnr_loss, "objective": self.objective}


def chosen_level(rule: StopRule, trace: ChainTrace) -> int:
    """The level the rule returns; a rule that never fires lets IMP run to the chain's last level."""
    chosen = rule.chosen(trace.imp_loss)
    return len(trace.imp_loss) - 1 if chosen is None else chosen


def score(rule: StopRule, traces: Sequence[ChainTrace], delta: float = 0.5, penalty: float = 1.0) -> Score:
    """Mean chosen sparsity, mean PSNR loss vs dense, and the single objective: per chain, sparsity minus
    ``penalty`` per dB of loss beyond ``delta`` (max sparsity subject to loss <= delta, as a penalty)."""
    s, loss, obj = [], [], []
    for t in traces:
        level = chosen_level(rule, t)
        s.append(t.sparsity[level])
        loss.append(t.psnr[0] - t.psnr[level])
        obj.append(s[-1] - penalty * max(0.0, loss[-1] - delta))
    return Score(float(np.mean(s)), float(np.mean(loss)), float(np.mean(obj)))


def fit_grid(traces: Sequence[ChainTrace], delta: float = 0.5, penalty: float = 1.0) -> StopRule:
    """The best rule of a fixed grid (first in grid order on ties): exact and deterministic, for cross-validation."""
    scores = [score(r, traces, delta, penalty).objective for r in GRID]
    return GRID[int(np.argmax(scores))]


def leave_one_out(traces: Sequence[ChainTrace], by: str = "image", delta: float = 0.5,
                  penalty: float = 1.0) -> dict:
    """Per held-out group (image or task): the rule fitted on the other chains, its objective there and on
    the held-out chains; gap = in-sample minus held-out objective, averaged over folds. With one group
    there is nothing to hold out: no folds, ``mean_gap`` None and ``note`` "n/a (1 image)"."""
    groups = sorted({getattr(t, by) for t in traces})
    if len(groups) < 2:
        return {"by": by, "folds": [], "mean_gap": None, "note": f"n/a ({len(groups)} {by})"}
    folds = []
    for g in groups:
        train = [t for t in traces if getattr(t, by) != g]
        test = [t for t in traces if getattr(t, by) == g]
        if not train:
            continue
        rule = fit_grid(train, delta, penalty)
        inside, outside = score(rule, train, delta, penalty), score(rule, test, delta, penalty)
        folds.append({"held_out": g, "rule": vars(rule), "train_objective": inside.objective,
                      "test_objective": outside.objective, "test_sparsity": outside.sparsity,
                      "test_psnr_change_db": 0.0 - outside.psnr_loss, "gap": inside.objective - outside.objective})
    gap = float(np.mean([f["gap"] for f in folds]))
    return {"by": by, "folds": folds, "mean_gap": gap, "note": f"mean gap {gap:.3f} over {len(folds)} folds"}


def traces_from_frame(frame, metric: str = "psnr_ema") -> list[ChainTrace]:
    """Chains from a tidy table (one row per trial x level, as analysis.runs builds it from MLflow).
    Chains with gaps in their levels are skipped: the rule must see every level."""
    out = []
    for run_id, one in frame.dropna(subset=["level", "imp_loss", metric]).groupby("run_id"):
        one = one.sort_values("level")
        if list(one["level"].astype(int)) != list(range(len(one))) or len(one) < 2:
            continue
        out.append(ChainTrace(str(one.get("label", one["run_id"]).iloc[0]), str(one["image"].iloc[0]),
                              str(one["task"].iloc[0]), int(one["seed"].iloc[0]), tuple(one["sparsity"]),
                              tuple(one["imp_loss"]), tuple(one[metric])))
    return out


def traces_from_store(root, metric: str = "psnr_ema") -> list[ChainTrace]:
    """IMP chains straight from a trunk store directory (no MLflow needed)."""
    import json

    from lipsweep.core.paths import StorePaths, config_of, record_of

    paths = StorePaths(root)
    out = []
    for config in paths.chain_configs():
        chain = json.loads(config.read_text())
        if chain.get("method") != "imp":
            continue
        dense = json.loads(config_of(paths.dense(chain["dense"])).read_text())
        recs = [json.loads(record_of(paths.dense(chain["dense"])).read_text())]
        recs += [json.loads(p.read_text()) for p in paths.finished_levels(config.parent.name)]
        if len(recs) < 2:
            continue
        out.append(trace_of(config.parent.name, dense["problem"]["image"], dense["problem"]["task"], dense["seed"],
                            recs, metric))
    return out


def chain_levels(traces: Sequence[ChainTrace]) -> tuple[int, int]:
    """The fewest and most IMP levels of the chains (level 0, dense, not counted)."""
    return min(len(t.imp_loss) for t in traces) - 1, max(len(t.imp_loss) for t in traces) - 1


def levels_needed(traces: Sequence[ChainTrace]) -> str:
    """How long chains must be for a rule to fire: ``k`` rises complete at level m + k at the earliest, m the
    level of the lowest IMP loss (later with smoothing); a loss still falling at the last level L puts m >= L."""
    short, long_ = chain_levels(traces)
    falling = sum(StopRule(k=1).fired_at(t.imp_loss) is None for t in traces)
    have = f"{short}" if short == long_ else f"{short} to {long_}"
    return (f"chains have {have} IMP levels; a rule that stops after k rises of the IMP loss fires at level m + k at "
            f"the earliest (m: the level of the lowest loss; later with smoothing); the loss still falls at the last "
            f"level in {falling} of {len(traces)} chains (m >= {short}), so they need at least {short} + k levels: "
            f"{short + 1} for k = 1, {short + 3} for the paper's k = 3")


def scored(rule: StopRule, traces: Sequence[ChainTrace], delta: float, penalty: float) -> dict:
    """A rule's signed score and on how many chains it fires."""
    return {**score(rule, traces, delta, penalty).signed(), "fires_on": fires_on(rule, traces)}


def fires_on(rule: StopRule, traces: Sequence[ChainTrace]) -> int:
    """On how many chains the rule fires at all."""
    return sum(rule.fired_at(t.imp_loss) is not None for t in traces)
