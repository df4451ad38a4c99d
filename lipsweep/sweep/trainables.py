"""The trials' side of a sweep, what a Ray worker runs: the Tune trainables, their one adapter to Ray's
reporting API (``report``; checked against Ray 2.60, where ``ray.tune.report`` is the call and
``ray.train.report`` raises inside Tune trainables), and posting progress within a level to the driver's
board. Kept apart from the driver's modules so a worker imports neither MLflow nor the driver's code."""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from lipsweep.core.records import numbers_of
from lipsweep.core.registry import load_plugins
from lipsweep.kinds.base import KINDS, TrialConfig, run_trial
from lipsweep.lottery.store import TrunkStore


def report(metrics: dict, state: dict) -> None:
    """The one place that calls Ray's reporting API: metrics plus a tiny checkpoint (store key, run id)."""
    from ray import tune

    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "trial.json").write_text(json.dumps(state))
        tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(tmp))


def last_checkpoint() -> dict | None:
    from ray import tune

    ckpt = tune.get_checkpoint()
    if ckpt is None:
        return None
    with ckpt.as_directory() as d:
        return json.loads((Path(d) / "trial.json").read_text())


def trainable(config: dict, specs: dict[str, dict]) -> None:
    """A Tune function trainable: one trial, one report per level, resumable through the store. Tune's config
    names the trial by key; its fields are in ``specs`` (``tune.with_parameters``: once per worker)."""
    import torch

    from lipsweep.lottery.tickets import Tickets

    load_plugins(config.get("plugins", ()))  # a fresh worker knows only what its plugins register
    trial = TrialConfig(**specs[config["trial"]]["config"])
    torch.set_num_threads(trial.threads)  # the fits set it too: it is part of their config
    tickets = Tickets(TrunkStore(config["store"], fresh_since=config.get("fresh_since")))
    resumed_from = (last_checkpoint() or {}).get("level", -1)
    node_id = _node_id()
    post, reported = _poster(config.get("progress"), trial.key), [0]
    if post is not None:
        tickets.on_step = lambda it, iters: post(reported[0], it / iters)
    for rec in run_trial(trial, tickets):
        rec = replace(rec, node_id=node_id)
        metrics = {**rec.numbers(), "level": rec.level, "fits": tickets.fits,
                   "resumed_from": resumed_from, "record": rec.to_json()}
        report(metrics, {"trial_key": trial.key, "chain_key": KINDS.get(trial.kind).found_key(trial.typed), "level": rec.level,
                         "store": config["store"]})
        reported[0] = rec.level + 1


def _node_id() -> str:
    import ray

    return ray.get_runtime_context().get_node_id()


def replay_trainable(config: dict) -> None:
    """Online stop-rule search (``stop_threshold``): Optuna proposes a rule, the trial replays every chain
    (computing any missing one through the store first) and reports the rule's score."""
    import torch

    from lipsweep.lottery.tickets import Tickets
    from lipsweep.stopping.replay import score, trace_of
    from lipsweep.stopping.rule import StopRule

    load_plugins(config.get("plugins", ()))
    torch.set_num_threads(max(1, int(config.get("threads", 1))))
    tickets = Tickets(TrunkStore(config["store"], fresh_since=config.get("fresh_since")))
    traces = []
    for spec in config["chains"]:
        trial = TrialConfig(**spec)
        recs = tickets.chain(trial.chain(), trial.levels).records
        traces.append(trace_of(trial.key, trial.image, trial.task, trial.seed, recs, config["metric"]))
    rule = StopRule(**{k: config["rule"][k] for k in ("k", "tolerance", "offset", "smooth")})
    sc = score(rule, traces, config["delta"])
    rec = {"level": 0, "objective": sc.objective, "sparsity": sc.sparsity, "psnr_change_db": -sc.psnr_loss,
           "chains": len(traces), "fits": tickets.fits, **{f"rule_{k}": v for k, v in vars(rule).items()}}
    report({**numbers_of(rec), "level": 0, "record": json.dumps(rec)}, {"rule": vars(rule)})


def _poster(name: str | None, key: str, every_s: float = 1.0) -> Callable[[int, int], None] | None:
    """The trial side of the board: posts (levels reported, fraction of this level) at most once a second."""
    if name is None:
        return None
    import ray

    try:
        board = ray.get_actor(name)
    except ValueError:  # the driver made none (or it is gone): no intra-level progress
        return None
    last = [0.0]

    def post(levels_done: int, fraction: float) -> None:
        if time.time() - last[0] >= every_s:
            last[0] = time.time()
            board.set.remote(key, levels_done, min(fraction, 0.99))

    return post
