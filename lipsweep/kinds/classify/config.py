"""What a classification trial is (paper Fig. 6, Fig. 7c/f): a training of the DIP classifier, a nested
mask chain over it (the *ticket*), and the DIP side the trial touches (a source chain whose masks it
uses, and the restoration target ``classify_transfer`` fits). Typed, frozen, validated from the wire fields
the kinds read; nothing here runs anything."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

from lipsweep.core.errors import ConfigError, check_int, check_positive
from lipsweep.core.keys import SCHEMA, content_key
from lipsweep.core.versions import code_part
from lipsweep.kinds.base import TrialConfig, fields_except
from lipsweep.kinds.classify import data as classify_data
from lipsweep.kinds.dip import GAN_ONLY, STOP
from lipsweep.lottery.chain import ChainConfig
from lipsweep.priors import ModelConfig
from lipsweep.pruning.methods import METHODS, nested_methods

# The DIP side (model, source chain, restoration target) and the classifier's own fields; ``data`` is the
# labelled set. No stop rule: a classification chain runs its levels.
TRANSFER_READS = fields_except(*(n for n in GAN_ONLY if n != "data"), "at_levels", "rewind_source", *STOP)
CLASSIFY_READS = TRANSFER_READS - {"deterministic", "platform_key"}  # its trainings are no DIP fits


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

    def eval_key(self, mask_hash: str) -> str:
        """One mask trained in isolation: the training plus the mask."""
        return content_key({**self.payload(), "kind": "classify_eval", "mask": mask_hash})


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
        return {**out, "training": t.payload()} if METHODS.get(self.method).trains else out

    @cached_property
    def key(self) -> str:
        return content_key(self.payload())


@dataclass(frozen=True)
class ClassifyTrial:
    """Levels 0..``levels``: the classification ticket's masks, or (``source``) a denoising chain's. ``target``
    is the trial's own DIP chain: the restoration target of ``classify_transfer``, and the classifier's model."""

    training: Training
    method: str
    prune_fraction: float
    levels: int
    target: ChainConfig
    source: ChainConfig | None = None

    @property
    def ticket(self) -> Ticket | None:
        return None if self.source is not None else Ticket(self.training, self.method, self.prune_fraction)


def training_of(cfg: TrialConfig, model: ModelConfig) -> Training:
    size = cfg.size or classify_data.default_size(cfg.data)
    return Training(cfg.data, classify_data.data_key(cfg.data), size, cfg.examples, model, cfg.seed, cfg.epochs,
                    cfg.batch_size, cfg.class_lr, cfg.threads, cfg.device)


def parse(cfg: TrialConfig) -> ClassifyTrial:
    """Everything a classification trial reads, before any trial starts (one-line errors naming the field)."""
    object.__setattr__(cfg, "data", classify_data.absolute(cfg.data))  # before compact() carries it to workers
    if cfg.model != "dip":
        raise ConfigError("model", f"kind {cfg.kind!r} builds its classifier from the DIP hourglass; allowed: dip, "
                                   f"got {cfg.model!r}")
    classify_data.check(cfg.data)
    target = cfg.chain()
    granularity = target.run.model.granularity
    size = cfg.size or classify_data.default_size(cfg.data)
    if size % granularity or size < 2 * granularity:
        raise ConfigError("size", f"the classifier's images must be a multiple of {granularity} px and at least "
                                  f"{2 * granularity} (depth {cfg.depth}), got {size}")
    check_int("epochs", cfg.epochs, 1)
    check_int("batch_size", cfg.batch_size, 2)
    if cfg.examples is not None:
        check_int("examples", cfg.examples, 2)
    check_positive("class_lr", cfg.class_lr)
    source = cfg.source() if cfg.has_source() else None
    if source is None:
        if cfg.method not in nested_methods():
            raise ConfigError("method", f"a classification ticket nests each level's mask in the last; allowed: "
                                        f"{', '.join(nested_methods())}, got {cfg.method!r}")
        if cfg.rewind != 0.0:
            raise ConfigError("rewind", "a classification ticket rewinds to theta_0 (LTH's loop); allowed: 0")
    return ClassifyTrial(training_of(cfg, target.run.model), cfg.method, cfg.prune_fraction, cfg.levels, target, source)


def contents(trial: ClassifyTrial) -> list[str]:
    return [trial.training.data_key] if trial.training.data else []
