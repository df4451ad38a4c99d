"""Lottery tickets across low- and high-level tasks (paper Fig. 6, Fig. 7c/f): trial kinds ``classify`` and
``classify_transfer``.

A *classification ticket* is LTH's IMP on the DIP classifier (``classifier.py``): train ``epochs`` epochs
with Adam under level L-1's mask, keep the 80% largest-magnitude remaining conv weights (globally), rewind
to theta_0; ``random`` keeps the same counts by random scores, nested the same way. Each level's training
*is* the isolated training of its mask, so its record is the evaluation, and IMP prunes its final weights.

``classify`` yields test accuracy per level: of the classification ticket, or (with ``source_task`` /
``source_image``) of a denoising chain's masks, level by level, minus ``head`` (Fig. 6a/c: "the denoising
LIP trained on classification"). ``classify_transfer`` fits a classification ticket's masks, plus a dense
``head``, on the trial's DIP restoration target (Fig. 6b/d); with source fields it is the denoising chain
itself on that target (its own levels when the image and task match: the reference line of Fig. 6b/d), so
one ``--set data=...`` serves every trial of the experiment.

Everything goes through the trunk store: ticket masks under ``classify/tickets``, trainings under
``classify/evals`` keyed by content (the data's file hashes, model, seed, training settings) and the mask's
hash, so the dense level 0 is trained once for every method and source; DIP fits go through ``Tickets``.
The DIP fields (``iters``, ``lr``, ...) describe the DIP side (a source chain, a restoration target).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, fields, replace
from functools import cached_property, lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from . import classify_data
from .errors import ConfigError, check_int, check_positive
from .masks import MaskSet
from .paths import config_of, curve_of
from .priors import ModelConfig, build_model, conv_weights
from .pruning import keep_top, level_counts
from .records import LevelRecord
from .registry import Registry
from .store import SCHEMA, content_key
from .tasks import stable_seed
from .trial import CLASSIFY_FIELDS, GAN_FIELDS, KINDS, TrialConfig, TrialKind, only_for
from .versions import code_part

# The version of this module's results (lipsweep.versions): raise it in the commit that changes them.
ALGORITHM = 1

if TYPE_CHECKING:
    from .tickets import Tickets

HEAD = "head"  # the DIP's output conv: the classifier replaces it with pooling + a linear layer


# -- what a training is, and what a ticket is --------------------------------------------------------------
@dataclass(frozen=True)
class Training:
    """Training one mask on a labelled set from theta_0: its store key is this plus the mask's hash."""

    data: str
    data_key: str
    size: int
    examples: int | None
    model: ModelConfig
    seed: int
    epochs: int
    batch_size: int
    lr: float
    threads: int
    device: str = "auto"  # cosmetic: never in a key

    def payload(self) -> dict:
        out = {"schema": SCHEMA, "kind": "classify_training", "data": self.data_key, "size": self.size,
               "examples": self.examples, "model": self.model.as_dict(), "seed": self.seed, "epochs": self.epochs,
               "batch_size": self.batch_size, "lr": self.lr, **code_part("classify")}
        if self.threads != 1:  # CPU sums depend on the thread count
            out["threads"] = self.threads
        return out

    @cached_property
    def key(self) -> str:
        return content_key(self.payload())


@dataclass(frozen=True)
class Ticket:
    """A classification mask chain: the training it prunes after, the method and the pruning rate."""

    training: Training
    method: str
    prune_fraction: float

    def payload(self) -> dict:
        t = self.training
        out = {"schema": SCHEMA, "kind": "classify_ticket", "method": self.method, "model": t.model.as_dict(),
               "prune_fraction": self.prune_fraction, "seed": t.seed, **code_part("classify")}
        return {**out, "training": t.payload()} if CLASSIFY_METHODS.get(self.method).trains else out

    @cached_property
    def key(self) -> str:
        return content_key(self.payload())


@dataclass(frozen=True)
class Successor:
    """A classification mask method: level L's mask (keeping ``keep``) from level L-1's, and whether it needs
    level L-1's trained weights."""

    make: Callable[[Tickets, Ticket, MaskSet, int, int], dict[str, torch.Tensor]]
    trains: bool


CLASSIFY_METHODS: Registry[Successor] = Registry("method")


def _imp(tk: Tickets, ticket: Ticket, prev: MaskSet, keep: int, level: int) -> dict[str, torch.Tensor]:
    """LTH's step: the ``keep`` largest |w| among ``prev``'s weights after training under ``prev``."""
    weights = trained_weights(tk, ticket.training, prev)
    return keep_top({n: weights[n].abs() for n in prev.masks}, prev, keep)


def _random(tk: Tickets, ticket: Ticket, prev: MaskSet, keep: int, level: int) -> dict[str, torch.Tensor]:
    """Uniform random scores over the remaining weights, ranked globally: IMP's counts, nested like IMP."""
    g = torch.Generator().manual_seed(stable_seed("classify-random", ticket.training.seed, level))
    return keep_top({n: torch.rand(m.shape, generator=g) for n, m in prev.masks.items()}, prev, keep)


CLASSIFY_METHODS.register("imp", Successor(_imp, trains=True))
CLASSIFY_METHODS.register("random", Successor(_random, trains=False))


def dip_view(cfg: TrialConfig) -> TrialConfig:
    """The trial's DIP side as an ``evaluation`` trial (the source chain and the target): the classification
    fields at their defaults, so the DIP kinds' own checks validate it."""
    defaults = {f.name: f.default for f in fields(TrialConfig) if f.name in (*CLASSIFY_FIELDS, "data")}
    return replace(cfg, kind="evaluation", **defaults)


def has_source(cfg: TrialConfig) -> bool:
    return bool(cfg.source_image or cfg.source_task or cfg.source_multi_images)


def training_of(cfg: TrialConfig) -> Training:
    model = dip_view(cfg).chain().run.model
    size = cfg.size or classify_data.default_size(cfg.data)
    return Training(cfg.data, classify_data.data_key(cfg.data), size, cfg.examples, model, cfg.seed, cfg.epochs,
                    cfg.batch_size, cfg.class_lr, cfg.threads, cfg.device)


def ticket_of(cfg: TrialConfig) -> Ticket:
    return Ticket(training_of(cfg), cfg.method, cfg.prune_fraction)


# -- masks -------------------------------------------------------------------------------------------------
@lru_cache(maxsize=16)
def conv_shapes(model: ModelConfig) -> tuple[tuple[str, torch.Size], ...]:
    """The DIP's conv weights' names and shapes (built once per config: ``lipsweep show`` asks per level)."""
    return tuple((n, w.shape) for n, w in conv_weights(build_model(model, 0)).items())


@lru_cache(maxsize=16)
def dense_mask(model: ModelConfig) -> MaskSet:
    """Every conv of the classifier (the DIP's convs but ``head``), kept (one per config: masks are values)."""
    return MaskSet({n: torch.ones(s, dtype=torch.bool) for n, s in conv_shapes(model) if n != HEAD},
                   {"method": "dense", "level": 0})


def without_head(mask: MaskSet) -> MaskSet:
    """A denoising mask on the classifier: ``head`` is what the linear layer replaced."""
    return MaskSet({n: m for n, m in mask.masks.items() if n != HEAD}, {**mask.meta, "dropped": HEAD})


def with_head(mask: MaskSet, model: ModelConfig) -> MaskSet:
    """A classification mask on the DIP: its ``head`` (absent from the classifier) stays dense."""
    head = dict(conv_shapes(model))[HEAD]
    return MaskSet({**mask.masks, HEAD: torch.ones(head, dtype=torch.bool)}, {**mask.meta, "dense": HEAD})


def ticket_mask(tk: Tickets, ticket: Ticket, level: int) -> MaskSet:
    """Level ``level``'s classification mask, made at most once across processes (level 0: dense)."""
    if level == 0:
        return dense_mask(ticket.training.model)
    d = tk.store.paths.classify_ticket(ticket.key, level)
    found = tk.store.read_mask(d)
    if found is not None:
        return found
    prev = ticket_mask(tk, ticket, level - 1)
    with tk.store.lock(f"classify-ticket-{ticket.key}-{level}"):
        found = tk.store.read_mask(d)
        if found is None:
            keep = level_counts(prev.total, level, ticket.prune_fraction)[level]
            masks = CLASSIFY_METHODS.get(ticket.method).make(tk, ticket, prev, keep, level)
            found = MaskSet(masks, {"method": ticket.method, "level": level, "ticket": ticket.key,
                                    "data": ticket.training.data, "seed": ticket.training.seed, "parent": prev.hash})
            tk.store.write_json(config_of(d.parent), ticket.payload())
            tk.store.write_mask(d, found)
    return found


# -- trainings through the store -----------------------------------------------------------------------------
def eval_key(training: Training, mask_hash: str) -> str:
    return content_key({**training.payload(), "kind": "classify_eval", "mask": mask_hash})


def evaluate(tk: Tickets, training: Training, mask: MaskSet) -> LevelRecord:
    """``mask`` trained in isolation from theta_0 on the set: its record, trained at most once."""
    d = tk.store.paths.classify_eval(eval_key(training, mask.hash))
    return tk.once(d, f"classify-eval-{d.name}", lambda: _evaluate(tk, training, mask, d))


def trained_weights(tk: Tickets, training: Training, mask: MaskSet) -> dict[str, torch.Tensor]:
    """The final conv weights of ``mask``'s training (IMP prunes them); trains again if they were lost."""
    evaluate(tk, training, mask)
    path = tk.store.paths.classify_weights(eval_key(training, mask.hash))
    state = tk.store.read_state(path)
    if state is None:
        tk.store.discard_record(path.parent, "its trained weights are missing")
        evaluate(tk, training, mask)
        state = tk.store.read_state(path)
    return {n: state[f"{n}.weight"] for n in mask.masks}


def dataset(tk: Tickets, training: Training) -> classify_data.Dataset:
    key = f"classify-data:{training.data_key}:{training.size}:{training.examples}"
    if key not in tk.loaded:
        tk.loaded[key] = classify_data.load(training.data, training.size, training.examples)
    return tk.loaded[key]


def _evaluate(tk: Tickets, training: Training, mask: MaskSet, d: Path) -> LevelRecord:
    from .classifier import build_classifier, train
    from .fit import resolve_device
    from .platforms import computing

    data = dataset(tk, training)
    model = build_classifier(training.model, len(data.classes), training.seed)
    mask.check_fits(model)
    device = resolve_device(training.device)
    with computing(training.threads, device.type) as platform:
        res = train(model, data, mask.masks, epochs=training.epochs, batch_size=training.batch_size,
                    lr=training.lr, seed=training.seed, device=device)
    tk.fits += 1
    tk.store.log_fit({"dense": f"classify-{training.key}", "mask": mask.hash, "start": "theta0",
                      "iters": training.epochs, "target": "classify", "seconds": round(res.seconds, 3),
                      "platform": platform.as_dict()})
    store = tk.store
    store.write_json(config_of(d), {**training.payload(), "mask": mask.hash, "classes": list(data.classes)})
    store.write_mask(d, mask)
    store.write_state(store.paths.classify_weights(d.name), res.state)
    store.write_json(curve_of(d), [res.curve])
    rec = LevelRecord(level=int(mask.meta.get("level", 0)), method=str(mask.meta.get("method", "given")),
                      rewind=0.0, rewind_iter=0, density=mask.density, sparsity=mask.sparsity, kept=mask.kept,
                      total=mask.total, mask_hash=mask.hash, layer_densities=mask.layer_densities(),
                      imp_loss=float(res.metrics["loss_final"]), seconds=res.seconds, metrics=res.metrics,
                      where=store.relative(d), platform=platform.as_dict())
    store.write_record(d, rec.to_dict())
    return rec


# -- the trial kinds -----------------------------------------------------------------------------------------
def run_classify(cfg: TrialConfig, tk: Tickets) -> Iterator[LevelRecord]:
    """Accuracy per level: the classification ticket, or a denoising chain's masks minus ``head``."""
    training = training_of(cfg)
    ticket = None if has_source(cfg) else ticket_of(cfg)
    source = dip_view(cfg).source() if ticket is None else None
    for level in range(cfg.levels + 1):
        if level == 0:
            mask, ref = dense_mask(training.model), None
        elif ticket is not None:
            mask, ref = ticket_mask(tk, ticket, level), f"classify/{ticket.key}/{level}"
        else:
            mask, ref = without_head(tk.mask(source, level)), f"{source.chain_key}/{level}"
        rec = evaluate(tk, training, mask)
        yield replace(rec, level=level, method=cfg.method if level else "dense", source_mask=ref,
                      source=dict(mask.meta) if level else None)


def run_transfer(cfg: TrialConfig, tk: Tickets) -> Iterator[LevelRecord]:
    """PSNR per level on the DIP target: the classification ticket's masks with a dense ``head`` (or, with
    source fields, the denoising chain's masks as the ``evaluation`` kind fits them)."""
    view = dip_view(cfg)
    if has_source(cfg):
        yield from KINDS.get("evaluation").run(view, tk)
        return
    target, ticket = view.chain(), ticket_of(cfg)
    yield tk.dense(target)
    for level in range(1, cfg.levels + 1):
        mask = with_head(ticket_mask(tk, ticket, level), target.run.model)
        yield replace(tk.evaluate(mask, target), source_mask=f"classify/{ticket.key}/{level}")


def check_classify(cfg: TrialConfig) -> None:
    """Everything a classification trial reads, before any trial starts (one-line errors naming the field)."""
    only_for(cfg, "gan", tuple(n for n in GAN_FIELDS if n != "data"))
    only_for(cfg, "evaluation", ("at_levels",))
    if cfg.model != "dip":
        raise ConfigError("model", f"kind {cfg.kind!r} builds its classifier from the DIP hourglass; allowed: dip, "
                                   f"got {cfg.model!r}")
    classify_data.check(cfg.data)
    granularity = cfg.chain().run.model.granularity
    size = cfg.size or classify_data.default_size(cfg.data)
    if size % granularity or size < 2 * granularity:
        raise ConfigError("size", f"the classifier's images must be a multiple of {granularity} px and at least "
                                  f"{2 * granularity} (depth {cfg.depth}), got {size}")
    dip_view(cfg)  # validates the DIP side (model, source chain, target)
    check_int("epochs", cfg.epochs, 1)
    check_int("batch_size", cfg.batch_size, 2)
    if cfg.examples is not None:
        check_int("examples", cfg.examples, 2)
    check_positive("class_lr", cfg.class_lr)
    if not has_source(cfg):
        CLASSIFY_METHODS.get(cfg.method)
        if cfg.rewind != 0.0:
            raise ConfigError("rewind", "a classification ticket rewinds to theta_0 (LTH's loop); allowed: 0")


def _found_key(cfg: TrialConfig) -> str:
    return dip_view(cfg).source().chain_key if has_source(cfg) else ticket_of(cfg).key


def _estimate(cfg: TrialConfig, store, counted: set) -> tuple[int, float, float]:
    from .classify_cost import estimate

    return estimate(cfg, store, counted)


def _kind(run: Callable) -> TrialKind:
    return TrialKind(run=run, chains=lambda t: (None, None), check=check_classify, found_key=_found_key,
                     estimate=_estimate, ready=lambda t: classify_data.ready(t.data),
                     contents=lambda t: [classify_data.data_key(t.data)] if t.data else [],
                     products=("classify", "dense", "chain", "evaluation"))


KINDS.register("classify", _kind(run_classify))
KINDS.register("classify_transfer", _kind(run_transfer))
