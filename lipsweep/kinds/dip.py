"""The DIP trial kinds: a *chain* (one method on one image/task/seed/rewind; Figs. 3, 9, 13, 15, ...) and
an *evaluation* (a source chain's masks, level by level, fitted on a target image/task: Figs. 5 and 14).
Both read through the trunk store, so a restarted trial resumes at its last finished level."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from lipsweep.core.records import LevelRecord
from lipsweep.kinds.base import TrialConfig, TrialKind, fields_except
from lipsweep.lottery.chain import ChainConfig
from lipsweep.stopping.rule import StopRule

if TYPE_CHECKING:
    from lipsweep.lottery.tickets import Tickets

GAN_ONLY = ("generator", "data", "tune_epochs", "tune_fraction", "latent", "measurements", "outliers",
            "objective", "restarts", "gan_eval")
CLASSIFY_ONLY = ("epochs", "batch_size", "examples", "class_lr", "classify_recipe")
SOURCE = ("source_image", "source_task", "source_multi_images", "source_iters", "at_levels")
STOP = ("stop_k", "stop_tolerance", "stop_keep_going")
EARLY_STOP = ("early_stop", "es_window", "es_patience", "es_alpha", "es_stop", "es_lag", "es_mask")  # every DIP fit's detector


@dataclass(frozen=True)
class ChainTrial:
    """Levels 0..``levels`` of one chain, halted by the stop rule unless ``keep_going``."""

    chain: ChainConfig
    levels: int
    stop: StopRule | None = None
    keep_going: bool = False


@dataclass(frozen=True)
class EvaluationTrial:
    """``source``'s masks (``at_levels``, else 1..``levels``) fitted on ``target`` from its theta_rewind."""

    target: ChainConfig
    source: ChainConfig
    levels: int
    at_levels: tuple[int, ...] = ()


def fit_params(chain: ChainConfig) -> dict[str, object]:
    """The fit values a chain really ran with (the task's and prior's defaults filled in)."""
    fit = chain.run.fit
    detector = {"es_window": fit.es_window, "es_patience": fit.es_patience} if fit.early_stop != "none" else {}
    return {"iters": fit.iters, "lr": fit.lr, "reg_noise_std": fit.reg_noise_std, "ema": fit.ema,
            "backtrack": fit.backtrack, **detector}


def _run_chain(t: ChainTrial, tickets: Tickets) -> Iterator[LevelRecord]:
    return tickets.iter_levels(t.chain, t.levels, stop=t.stop, keep_going=t.keep_going)


def run_evaluation(t: EvaluationTrial, tickets: Tickets) -> Iterator[LevelRecord]:
    yield tickets.dense(t.target)
    for level in t.at_levels or range(1, t.levels + 1):
        ref = f"{t.source.chain_key}/{level}"
        if t.source.chain_key == t.target.chain_key:  # a mask on its own image and task: the chain's level is it
            yield replace(tickets.level(t.source, level), source_mask=ref)
        else:
            yield replace(tickets.evaluate(tickets.mask(t.source, level), t.target), source_mask=ref)


def parse_evaluation(cfg: TrialConfig) -> EvaluationTrial:
    return EvaluationTrial(cfg.chain(), cfg.source(), cfg.levels, cfg.at_levels)


def _evaluation_params(t: EvaluationTrial) -> dict[str, object]:
    problem = t.source.run.problem
    return {**fit_params(t.target), "source_iters": t.source.run.fit.iters, "source_image": problem.image,
            "source_task": problem.task}


CHAIN = TrialKind(
    reads=fields_except(*GAN_ONLY, *CLASSIFY_ONLY, *SOURCE),
    parse=lambda c: ChainTrial(c.chain(), c.levels, c.stop_rule(), c.stop_keep_going),
    run=_run_chain, found_key=lambda t: t.chain.chain_key, chains=lambda t: (t.chain, None),
    multiple=lambda t: t.chain.run.model.granularity, resolved=lambda t: fit_params(t.chain))
EVALUATION = TrialKind(
    reads=fields_except(*GAN_ONLY, *CLASSIFY_ONLY, *STOP),
    parse=parse_evaluation, run=run_evaluation, found_key=lambda t: t.target.chain_key,
    chains=lambda t: (t.source, t.target), multiple=lambda t: t.target.run.model.granularity,
    products=("dense", "chain", "evaluation"), resolved=_evaluation_params)
