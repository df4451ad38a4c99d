"""Lottery tickets in a pretrained GAN generator (paper Section 5; Table 1, Fig. 8), as the trial kind ``gan``.

A *ticket* is the generator IMP chain: level L fine-tunes the pretrained generator under level L-1's mask
against its discriminator (paper: 30 epochs on 40% of CelebA-HQ), prunes 20% of the remaining generator
weights globally by magnitude and rewinds to the pretrained weights; ``random`` prunes the same counts at
random, and ``magnitude`` by the pretrained weights' magnitudes without fine-tuning (an ablation): the
``nested`` entries of ``pruning.METHODS``. A ticket depends on the generator, the method and the fine-tuning
only, so every image, task and latent setting shares it. An *evaluation* fits latents of the masked
pretrained generator to one degraded image (``latent.fit_latent``). Both go through the lottery workspace
(``gan/tickets``, ``gan/evals``): no level is fine-tuned or fitted twice, and an evaluation is keyed by its
mask's hash, so the dense level is one fit for both methods.

``gan_eval`` says which weights a level is scored with. ``pretrained``: the rewound pretrained generator x the
level's mask (the paper's text, read literally). ``finetuned``: the reference code's protocol (``tuned_weights``,
``evaluated_state``): the fine-tuned sparse generator, for IMP and random alike, fine-tuned with the reference
recipe (``train.fine_tune(recipe="reference")``).
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from lipsweep.core.paths import config_of
from lipsweep.core.platforms import computing
from lipsweep.core.records import GAN_METRIC_KEYS, LevelRecord
from lipsweep.fitting.latent import LatentResult, fit_latent
from lipsweep.kinds.base import TrialKind
from lipsweep.kinds.gan import config
from lipsweep.kinds.gan.config import CS_NOISE, GanEval, GanTicket, GanTrial, tuned_path
from lipsweep.kinds.gan.cost import cost_model, estimate
from lipsweep.kinds.gan.generators import clean_pixels, dense_mask, rgb
from lipsweep.lottery.workspace import Workspace, mask_fields
from lipsweep.priors.pggan import GanCheckpoint, load_checkpoint, masked_weights
from lipsweep.problems.tasks import make_cs_problem, make_problem, stable_seed, to_pixels
from lipsweep.pruning.masks import MaskSet
from lipsweep.pruning.methods import METHODS, NestedRequest, level_counts

# The version of this module's results (lipsweep.core.versions): raise it in the commit that changes them.
ALGORITHM = 1

if TYPE_CHECKING:
    from lipsweep.lottery.tickets import Tickets


def loaded_generator(ws: Workspace, path: str) -> GanCheckpoint:
    """The checkpoint, loaded once per workspace (a trial reads it for every level)."""
    key = f"generator:{path}"
    if key not in ws.loaded:
        ws.loaded[key] = load_checkpoint(path)
    return ws.loaded[key]


def tuning_data(ws: Workspace, ticket: GanTicket) -> torch.Tensor:
    """The fine-tuning images: a user folder, or the generator's own training split (held-out faces excluded)."""
    from lipsweep.kinds.gan.train import load_faces, split

    info = ticket.generator
    key = f"data:{ticket.data}:{info.content_hash}"
    if key not in ws.loaded:
        faces = load_faces(ticket.data or info.data, info.size, info.channels)
        holdout = info.holdout if ticket.data is None else 0
        ws.loaded[key] = faces[split(len(faces), holdout)[0]]
    return ws.loaded[key]


# -- tickets: the generator's nested mask chain --------------------------------------------------------
def ticket_mask(ws: Workspace, ticket: GanTicket, level: int) -> MaskSet:
    """Level ``level``'s generator mask, computed at most once across processes (level 0: dense)."""
    if level == 0:
        return dense_mask(loaded_generator(ws, ticket.generator.path).generator)
    return ws.nested_mask(ws.store.paths.gan_ticket(ticket.key, level), f"gan-ticket-{ticket.key}-{level}",
                          lambda: ticket_mask(ws, ticket, level - 1), lambda prev: _new_mask(ws, ticket, prev, level),
                          ticket.payload)


def _ranked(ws: Workspace, ticket: GanTicket, prev: MaskSet, level: int, meta: dict) -> dict[str, torch.Tensor]:
    """The weights IMP ranks for level ``level``: fine-tuned under ``prev`` (level - 1's mask), by the zoo
    recipe (``pretrained``) or, stored and scored later too, by the reference recipe (``finetuned``)."""
    if not ticket.finetuned:
        return _fine_tuned(ws, ticket, prev, level, meta)
    state = tuned_weights(ws, ticket, level - 1)
    return {name: state[f"{name}.weight"] for name in prev.masks}


def _fine_tuned(ws: Workspace, ticket: GanTicket, prev: MaskSet, level: int, meta: dict) -> dict[str, torch.Tensor]:
    """Fine-tune the pretrained G (and D) under ``prev`` (the paper's IMP step): the weights IMP ranks. The
    losses go into the new mask's provenance; the fine-tuning is one fit of the ledger."""
    from lipsweep.kinds.gan.train import fine_tune

    ckpt = loaded_generator(ws, ticket.generator.path)
    g, d = copy.deepcopy(ckpt.generator), copy.deepcopy(ckpt.discriminator)
    start = time.perf_counter()
    losses = fine_tune(g, d, tuning_data(ws, ticket), epochs=ticket.epochs, fraction=ticket.fraction,
                       mask=dict(prev.masks), seed=stable_seed("gan-tune", ticket.seed, level))
    meta.update({f"tune_{k}": float(v) for k, v in losses.items()})
    ws.count_fit({"dense": f"gan-tune-{ticket.generator.content_hash}", "mask": prev.hash, "start": "pretrained",
                  "iters": ticket.epochs, "target": "fine-tune", "seconds": round(time.perf_counter() - start, 3),
                  "platform": meta["platform"]})
    return masked_weights(g)


def _new_mask(ws: Workspace, ticket: GanTicket, prev: MaskSet, level: int) -> MaskSet:
    keep = level_counts(prev.total, level, ticket.prune_fraction)[level]
    with computing(ticket.threads) as platform:  # fine-tuning sums depend on the thread count, as its key says
        meta: dict = {"platform": platform.as_dict()}
        req = NestedRequest(prev, keep, stable_seed("gan-random", ticket.seed, level),
                            trained=lambda: _ranked(ws, ticket, prev, level, meta),
                            start=lambda: masked_weights(loaded_generator(ws, ticket.generator.path).generator))
        masks = METHODS.get(ticket.method).nested(req)
    tune = {k: v for k, v in meta.items() if k != "platform"}
    return MaskSet(masks, {"method": ticket.method, "level": level, "generator": ticket.generator.content_hash,
                           "seed": ticket.seed, "parent": prev.hash, "platform": meta["platform"], **tune})


# -- gan_eval finetuned: the reference code's fine-tuned sparse generators --------------------------------
def tuned_weights(ws: Workspace, ticket: GanTicket, level: int) -> dict[str, torch.Tensor]:
    """The whole generator state fine-tuned under level ``level``'s mask by the reference recipe, computed at
    most once across processes and read by every level, image and task that needs it (IMP's ranking of
    level ``level`` + 1 and the scoring of levels ``level`` and ``level`` + 1)."""
    mask = ticket_mask(ws, ticket, level)
    key = ticket.tune_key(level, mask.hash)
    path = tuned_path(ws.store, key)
    return ws.once_value(lambda: ws.store.read_state(path), f"gan-tune-{key}",
                         lambda: _tune_reference(ws, ticket, mask, level, path))


def _tune_reference(ws: Workspace, ticket: GanTicket, mask: MaskSet, level: int, path: Path) -> dict[str, torch.Tensor]:
    """Fine-tune the pretrained G (and its dense D) under ``mask``, as the reference's level loop does before
    it prunes (PGAN_random_IMP.py l.477-501); the raw G is kept, as its saved ``model.state_dict()`` is (its
    moving average ``gen_avg_param`` is never saved). One fit of the ledger; stored before it is used."""
    from lipsweep.kinds.gan.train import fine_tune

    ckpt = loaded_generator(ws, ticket.generator.path)
    g, d = copy.deepcopy(ckpt.generator), copy.deepcopy(ckpt.discriminator)
    with computing(ticket.threads) as platform:
        start = time.perf_counter()
        losses = fine_tune(g, d, tuning_data(ws, ticket), epochs=ticket.epochs, fraction=ticket.fraction,
                           mask=dict(mask.masks), seed=stable_seed("gan-tune-reference", ticket.seed, level),
                           recipe="reference")
    ws.count_fit({"dense": f"gan-tune-{ticket.generator.content_hash}", "mask": mask.hash, "start": "pretrained",
                  "iters": ticket.epochs, "target": "fine-tune", "recipe": "reference", "method": ticket.method,
                  "seconds": round(time.perf_counter() - start, 3), "platform": platform.as_dict(),
                  **{f"tune_{k}": round(float(v), 6) for k, v in losses.items()}})
    state = {k: v.detach().clone() for k, v in g.state_dict().items()}
    ws.store.write_json(path.with_suffix(".json"), ticket.tune_payload(level, mask.hash))
    ws.store.write_state(path, state)
    return state


def tuned_level(ticket: GanTicket, level: int) -> int | None:
    """Under whose mask the generator ``finetuned`` scores at ``level`` was fine-tuned (None: ``pretrained``).
    Level L >= 1: L - 1's, then masked to L's. This is the reference's ``Iter_{state}_sparse_trained.pth``
    (PGAN_random_IMP.py l.491-525: fine-tune under the current mask, prune 20%, save, then rewind), which its
    evaluations load (Eval_sparse_PGAN_on_CS.py l.418-420); its random baseline runs the same loop. Level 0:
    the dense fine-tuned G, the reference's ``Dense_iter_0_trained.pth`` (l.510-511), one model for both
    methods as Table 1's 0% column is one number. Not copied: the evaluations' extra 20% random prune
    (Eval_sparse_PGAN_on_CS.py l.422-423) and D's pruning (l.518-533; the paper prunes G only)."""
    return max(level - 1, 0) if ticket.finetuned else None


# -- evaluations: latent optimisation of the masked generator ------------------------------------------
def gan_problem(ev: GanEval):
    clean = clean_pixels(ev.image, ev.ticket.generator)
    if ev.task == "cs":
        return make_cs_problem(clean, ev.seed, ev.measurements, ev.outliers, CS_NOISE)
    return make_problem(ev.task, clean, ev.seed)


def evaluate_level(ws: Workspace, ev: GanEval, level: int) -> LevelRecord:
    mask = ticket_mask(ws, ev.ticket, level)
    weights = _weights_key(ws, ev.ticket, level)
    key = ev.key(mask.hash, weights)
    d = ws.store.paths.gan_eval(key)
    rec = ws.once(d, f"gan-eval-{key}", lambda: _evaluate(ws, ev, mask, level, d))
    return replace(rec, level=level, method=ev.ticket.method if level else "dense")


def _weights_key(ws: Workspace, ticket: GanTicket, level: int) -> str | None:
    """The tune key of the weights ``finetuned`` scores at ``level``, from the masks alone: naming an evaluation
    that is already stored runs no fine-tuning."""
    under = tuned_level(ticket, level)
    return None if under is None else ticket.tune_key(under, ticket_mask(ws, ticket, under).hash)


def evaluated_generator(ws: Workspace, ev: GanEval, mask: MaskSet, level: int) -> torch.nn.Module:
    """The generator a level is scored with: pretrained, or (``finetuned``) fine-tuned under the last mask, then
    masked to this level's."""
    under = tuned_level(ev.ticket, level)
    return masked_generator(ws, ev, mask, None if under is None else tuned_weights(ws, ev.ticket, under))


def masked_generator(ws: Workspace, ev: GanEval, mask: MaskSet,
                     state: dict[str, torch.Tensor] | None = None) -> torch.nn.Module:
    """The pretrained generator (rewound), or the one ``state`` holds, with pruned weights set to exactly zero."""
    g = copy.deepcopy(loaded_generator(ws, ev.ticket.generator.path).generator)
    if state is not None:
        g.load_state_dict(state)
    weights = masked_weights(g)
    with torch.no_grad():
        for name, m in mask.masks.items():
            weights[name].mul_(m.to(weights[name].dtype))
    return g.eval()


def _evaluate(ws: Workspace, ev: GanEval, mask: MaskSet, level: int, d: Path) -> LevelRecord:
    problem = gan_problem(ev)
    g = evaluated_generator(ws, ev, mask, level)
    with computing(ev.ticket.threads) as platform:
        res = fit_latent(g, problem, ev.ticket.generator.latent, ev.fit, ev.seed)
    weights = _weights_key(ws, ev.ticket, level)
    ws.count_fit({"dense": f"gan-{ev.ticket.generator.content_hash}", "mask": mask.hash,
                  "start": "pretrained" if weights is None else f"tuned-{weights}",
                  "iters": ev.fit.iters, "target": "latent", "seconds": round(res.seconds, 3),
                  "platform": platform.as_dict()})
    ws.store.write_json(config_of(d), ev.payload(mask.hash, weights))
    ws.store.write_mask(d, mask.with_meta(**({"level": level} if level else {"method": "dense"})))
    rec = LevelRecord(level=level, method=ev.ticket.method if level else "dense", rewind=0.0, rewind_iter=0,
                      **mask_fields(mask), imp_loss=float(res.metrics["loss"]), seconds=res.seconds,
                      metrics={k: float(v) for k, v in res.metrics.items() if _finite(v)},
                      platform=platform.as_dict())
    return ws.finish(d, rec, _images(res, problem), [res.curve])


def _finite(v: object) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _images(res: LatentResult, problem) -> dict:
    """Restored (chosen by the measurement loss), the oracle restart's, the truth and (inpainting) the
    observation: Fig. 8's grid reads them."""
    images = {"restored": rgb(res.restored), "peak": rgb(res.restored_oracle), "clean": rgb(to_pixels(problem.clean))}
    if problem.observation.dim() == 4:  # an image (inpainting); a CS observation is a vector of m
        images["observation"] = rgb(to_pixels(problem.baseline))
    return images


# -- the trial kind ------------------------------------------------------------------------------------
def run_gan(trial: GanTrial, tickets: Tickets) -> Iterator[LevelRecord]:
    for level in range(trial.levels + 1):
        yield evaluate_level(tickets, trial.eval, level)


KIND = TrialKind(reads=config.READS, parse=config.parse, run=run_gan, found_key=lambda t: t.eval.ticket.key,
                 estimate=estimate, cost_model=cost_model, ready=config.ready, contents=config.contents, products=("gan",),
                 metrics=(*GAN_METRIC_KEYS, "imp_loss"))
