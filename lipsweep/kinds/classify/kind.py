"""Lottery tickets across low- and high-level tasks (paper Fig. 6, Fig. 7c/f): trial kinds ``classify`` and
``classify_transfer``.

A *classification ticket* is LTH's IMP on the DIP classifier (``model.py``): train ``epochs`` epochs with
Adam under level L-1's mask, keep the 80% largest-magnitude remaining conv weights (globally), rewind to
theta_0; ``random`` keeps the same counts by random scores, nested the same way (the ``nested`` entries of
``pruning.METHODS``). Each level's training *is* the isolated training of its mask, so its record is the
evaluation, and IMP prunes its final weights.

``classify`` yields test accuracy per level: of the classification ticket, or (with ``source_task`` /
``source_image``) of a denoising chain's masks, level by level, minus ``head`` (Fig. 6a/c: "the denoising
LIP trained on classification"). ``classify_transfer`` fits a classification ticket's masks, plus a dense
``head``, on the trial's DIP restoration target (Fig. 6b/d); with source fields it is the denoising chain
itself on that target (its own levels when the image and task match: the reference line of Fig. 6b/d), so
one ``--set data=...`` serves every trial of the experiment.

Everything goes through the lottery workspace: ticket masks under ``classify/tickets``, trainings under
``classify/evals`` keyed by content (the data's file hashes, model, seed, training settings) and the mask's
hash, so the dense level 0 is trained once for every method and source. The DIP fields (``iters``, ``lr``,
...) describe the DIP side (a source chain, a restoration target).

``classify_recipe: reference`` is the reference code's loop instead (``LTH_IMP_Classification.py`` l.139-216):
no rewinding. Level L's training starts from level L-1's trained network (every weight, BatchNorm and the
linear layer) times level L's mask, with a fresh SGD, so its store key chains the keys before it (``from``).
``random`` trains on the same way (l.197-198 only swap the pruning function). A denoising chain's mask on the
reference classifier is trained from theta_0 like the reference's ``load_ticket_cifar`` (``LTH_utils.py``
l.193-217). The reference ranks the two input convs in its global magnitude step too (``pruning_model`` takes
every Conv2d, ``pruning_utils.py`` l.13-35), bakes those zeros in (``remove_prune``) but never masks them again,
so they regrow; here they are simply never pruned (3,468 of ~2.2M conv weights at width 128).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from lipsweep.core.paths import config_of
from lipsweep.core.platforms import computing
from lipsweep.core.records import CLASSIFY_METRIC_KEYS, METRIC_KEYS, LevelRecord
from lipsweep.kinds.base import TrialKind
from lipsweep.kinds.classify import config, cost
from lipsweep.kinds.classify import data as classify_data
from lipsweep.kinds.classify.config import ClassifyTrial, Ticket, Training
from lipsweep.kinds.classify.masks import check_fits_classifier, dense_mask, on_classifier, on_dip
from lipsweep.kinds.dip import EvaluationTrial, fit_params, run_evaluation
from lipsweep.lottery.workspace import Workspace, mask_fields
from lipsweep.priors import build_model, conv_weights
from lipsweep.problems.tasks import stable_seed
from lipsweep.pruning.masks import MaskSet
from lipsweep.pruning.methods import METHODS, NestedRequest, level_counts

# The version of this module's results (lipsweep.core.versions): raise it in the commit that changes them.
ALGORITHM = 1

if TYPE_CHECKING:
    from lipsweep.lottery.tickets import Tickets


@dataclass(frozen=True)
class Start:
    """Where a training starts other than theta_0: the key of the training it trains on from, and that
    training's final state (the reference recipe's next level)."""

    key: str
    state: Callable[[], dict[str, torch.Tensor]]


def ticket_mask(ws: Workspace, ticket: Ticket, level: int) -> MaskSet:
    """Level ``level``'s classification mask, made at most once across processes (level 0: dense)."""
    if level == 0:
        return dense_mask(ticket.training.model, ticket.training.recipe)
    return ws.nested_mask(ws.store.paths.classify_ticket(ticket.key, level), f"classify-ticket-{ticket.key}-{level}",
                          lambda: ticket_mask(ws, ticket, level - 1), lambda prev: _new_mask(ws, ticket, prev, level),
                          ticket.payload)


def _new_mask(ws: Workspace, ticket: Ticket, prev: MaskSet, level: int) -> MaskSet:
    t = ticket.training
    req = NestedRequest(prev, level_counts(prev.total, level, ticket.prune_fraction)[level],
                        stable_seed("classify-random", t.seed, level),
                        trained=lambda: trained_weights(ws, t, prev, ticket_start(ws, ticket, level - 1)),
                        start=lambda: conv_weights(build_model(t.model, t.seed)))
    masks = METHODS.get(ticket.method).nested(req)
    return MaskSet(masks, {"method": ticket.method, "level": level, "ticket": ticket.key, "data": t.data,
                           "seed": t.seed, "parent": prev.hash})


def ticket_start(ws: Workspace, ticket: Ticket, level: int) -> Start | None:
    """Where level ``level``'s training starts: theta_0 (None) at level 0 and under LTH's rewinding; under the
    reference recipe, level L-1's trained network (prune, then train on: LTH_IMP_Classification.py l.197-216)."""
    t = ticket.training
    if level == 0 or not t.continues:
        return None
    prev, before = ticket_mask(ws, ticket, level - 1), ticket_start(ws, ticket, level - 1)
    return Start(t.eval_key(prev.hash, before and before.key), lambda: trained_state(ws, t, prev, before))


# -- trainings through the store -----------------------------------------------------------------------------
def evaluate(ws: Workspace, training: Training, mask: MaskSet, start: Start | None = None) -> LevelRecord:
    """``mask`` trained on the set from theta_0 (or from ``start``): its record, trained at most once."""
    d = ws.store.paths.classify_eval(training.eval_key(mask.hash, start and start.key))
    return ws.once(d, f"classify-eval-{d.name}", lambda: _evaluate(ws, training, mask, d, start))


def trained_state(ws: Workspace, training: Training, mask: MaskSet,
                  start: Start | None = None) -> dict[str, torch.Tensor]:
    """The final state of ``mask``'s training (IMP prunes it, the reference recipe trains on from it); trains
    again if it was lost."""
    evaluate(ws, training, mask, start)
    path = ws.store.paths.classify_weights(training.eval_key(mask.hash, start and start.key))
    state = ws.store.read_state(path)
    if state is None:
        ws.store.discard_record(path.parent, "its trained weights are missing")
        evaluate(ws, training, mask, start)
        state = ws.store.read_state(path)
    return state


def trained_weights(ws: Workspace, training: Training, mask: MaskSet,
                    start: Start | None = None) -> dict[str, torch.Tensor]:
    """The final weights of ``mask``'s masked convs."""
    state = trained_state(ws, training, mask, start)
    return {n: state[f"{n}.weight"] for n in mask.masks}


def dataset(ws: Workspace, training: Training) -> classify_data.Dataset:
    key = f"classify-data:{training.data_key}:{training.size}:{training.examples}"
    if key not in ws.loaded:
        ws.loaded[key] = classify_data.load(training.data, training.size, training.examples)
    return ws.loaded[key]


def _evaluate(ws: Workspace, training: Training, mask: MaskSet, d: Path, start: Start | None) -> LevelRecord:
    from lipsweep.fitting.fit import resolve_device
    from lipsweep.kinds.classify.model import build_classifier, train

    data = dataset(ws, training)
    model = build_classifier(training.model, len(data.classes), training.seed, training.recipe, training.size)
    if start is not None:
        model.load_state_dict(start.state())
    check_fits_classifier(mask, model, training.recipe)
    device = resolve_device(training.device)
    with computing(training.threads, device.type) as platform:
        res = train(model, data, mask.masks, epochs=training.epochs, batch_size=training.batch_size,
                    lr=training.lr, seed=training.seed, device=device, recipe=training.recipe)
    begun = {"start": "theta0"} if start is None else {"start": "trained", "from": start.key}
    ws.count_fit({"dense": f"classify-{training.key}", "mask": mask.hash, **begun, "iters": training.epochs,
                  "target": "classify", "seconds": round(res.seconds, 3), "platform": platform.as_dict()})
    extra = {"from": start.key} if start is not None else {}
    ws.store.write_json(config_of(d), {**training.payload(), "mask": mask.hash, "classes": list(data.classes),
                                       **extra})
    ws.store.write_mask(d, mask)
    ws.store.write_state(ws.store.paths.classify_weights(d.name), res.state)
    rec = LevelRecord(level=int(mask.meta.get("level", 0)), method=str(mask.meta.get("method", "given")),
                      rewind=0.0, rewind_iter=0, **mask_fields(mask), imp_loss=float(res.metrics["loss_final"]),
                      seconds=res.seconds, metrics=res.metrics, platform=platform.as_dict())
    return ws.finish(d, rec, curves=[res.curve])


# -- the trial kinds -----------------------------------------------------------------------------------------
def run_classify(trial: ClassifyTrial, tickets: Tickets) -> Iterator[LevelRecord]:
    """Accuracy per level: the classification ticket, or a denoising chain's masks minus the convs the recipe's
    classifier never masks (``head``; the input convs under ``reference``), trained from theta_0."""
    ticket, recipe = trial.ticket, trial.training.recipe
    for level in range(trial.levels + 1):
        start = ticket_start(tickets, ticket, level) if ticket is not None else None
        if level == 0:
            mask, ref = dense_mask(trial.training.model, recipe), None
        elif ticket is not None:
            mask, ref = ticket_mask(tickets, ticket, level), f"classify/{ticket.key}/{level}"
        else:
            mask, ref = on_classifier(tickets.mask(trial.source, level), recipe), f"{trial.source.chain_key}/{level}"
        rec = evaluate(tickets, trial.training, mask, start)
        yield replace(rec, level=level, method=trial.method if level else "dense", source_mask=ref,
                      source=dict(mask.meta) if level else None)


def run_transfer(trial: ClassifyTrial, tickets: Tickets) -> Iterator[LevelRecord]:
    """PSNR per level on the DIP target: the classification ticket's masks with the convs its classifier does not
    mask dense (``head``; the input convs under the reference recipe) (or, with source fields, the denoising chain's masks as the ``evaluation`` kind fits them)."""
    if trial.source is not None:
        yield from run_evaluation(EvaluationTrial(trial.target, trial.source, trial.levels), tickets)
        return
    ticket = trial.ticket
    yield tickets.dense(trial.target)
    for level in range(1, trial.levels + 1):
        mask = on_dip(ticket_mask(tickets, ticket, level), trial.target.run.model, trial.training.recipe)
        yield replace(tickets.evaluate(mask, trial.target), source_mask=f"classify/{ticket.key}/{level}")


def _kind(run, reads: frozenset[str], estimate, metrics: tuple[str, ...], resolved=lambda t: {}) -> TrialKind:
    """``class_lr`` is logged as the step the recipe really took (``reference`` left unset: SGD's 0.01)."""
    return TrialKind(reads=reads, parse=config.parse, run=run, estimate=estimate, cost_model=cost.cost_model,
                     metrics=metrics,
                     resolved=lambda t: {**resolved(t), "class_lr": t.training.lr},
                     found_key=lambda t: t.source.chain_key if t.source is not None else t.ticket.key,
                     multiple=lambda t: t.target.run.model.granularity,
                     ready=lambda t: classify_data.ready(t.training.data), contents=config.contents,
                     products=("classify", "dense", "chain", "evaluation"))


CLASSIFY = _kind(run_classify, config.CLASSIFY_READS, cost.estimate_classify, (*CLASSIFY_METRIC_KEYS, "imp_loss"))
TRANSFER = _kind(run_transfer, config.TRANSFER_READS, cost.estimate_transfer, (*METRIC_KEYS, "imp_loss"),
                 lambda t: fit_params(t.target))
