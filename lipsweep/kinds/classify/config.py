"""What a classification trial is (paper Fig. 6, Fig. 7c/f): a training of the DIP classifier, a nested
mask chain over it (the *ticket*), and the DIP side the trial touches (a source chain whose masks it
uses, and the restoration target ``classify_transfer`` fits). Typed, frozen, validated from the wire fields
the kinds read; nothing here runs anything.

``classify_recipe`` picks how the ticket is trained and pruned: ``lth`` (lipsweep's reading of the paper: pooling
head, zero-padded input, Adam, rewind to theta_0 each level) or ``reference`` (the reference code,
``LTH_IMP_Classification.py`` of VITA-Group/Chasing-Better-DIPs: fresh 3-channel input convs that are never
masked, 1x1 conv -> Flatten -> Linear -> Sigmoid, SGD 0.01 / 0.9 / 2e-4 stepped at 1/2 and 3/4 of the epochs,
no rewinding: each level trains on from the last level's trained weights; see ``model.py`` and ``kind.py``)."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

from lipsweep.core.errors import ConfigError, check_choice, check_int, check_positive
from lipsweep.core.keys import SCHEMA, content_key
from lipsweep.core.versions import code_part
from lipsweep.kinds.base import FIELD_DEFAULTS, TrialConfig, fields_except
from lipsweep.kinds.classify import data as classify_data
from lipsweep.kinds.dip import EARLY_STOP, GAN_ONLY, STOP
from lipsweep.lottery.chain import ChainConfig
from lipsweep.priors import ModelConfig
from lipsweep.pruning.methods import METHODS, nested_methods

# The DIP side (model, source chain, restoration target) and the classifier's own fields; ``data`` is the
# labelled set. No stop rule: a classification chain runs its levels.
TRANSFER_READS = fields_except(*(n for n in GAN_ONLY if n != "data"), "at_levels", "rewind_source", *STOP)
CLASSIFY_READS = TRANSFER_READS - {"deterministic", "platform_key", *EARLY_STOP}  # its trainings are no DIP fits

RECIPES = ("lth", "reference")
# The reference recipe's defaults (LTH_IMP_Classification.py l.48: SGD's lr; l.164: CIFAR upsampled to 50 px).
# ``class_lr`` left at its default (Adam's 1e-3 of ``lth``) means the recipe's own step.
REFERENCE_LR = 0.01
REFERENCE_SIZES = {"cifar10": 50}
LTH_LR = FIELD_DEFAULTS["class_lr"]


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
    recipe: str = "lth"

    @property
    def continues(self) -> bool:
        """Whether a ticket's level trains on from the last level's trained weights (no rewinding)."""
        return self.recipe == "reference"

    def payload(self) -> dict:
        out = {"schema": SCHEMA, "kind": "classify_training", "data": self.data_key, "size": self.size,
               "examples": self.examples, "model": self.model.as_dict(), "seed": self.seed, "epochs": self.epochs,
               "batch_size": self.batch_size, "lr": self.lr, **code_part("classify")}
        if self.threads != 1:  # CPU sums depend on the thread count
            out["threads"] = self.threads
        if self.recipe != "lth":  # lth's keys stay those pinned before the field existed
            out["recipe"] = self.recipe
        return out

    @cached_property
    def key(self) -> str:
        return content_key(self.payload())

    def eval_key(self, mask_hash: str, start: str | None = None) -> str:
        """One mask trained from theta_0 (``start`` None), or from the trained network of the training keyed
        ``start`` (the reference recipe's next level): the training, the mask and where it started."""
        out = {**self.payload(), "kind": "classify_eval", "mask": mask_hash}
        return content_key({**out, "from": start} if start else out)


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
        if t.recipe != "lth":  # a random ticket's masks cover other convs under the reference recipe
            out["recipe"] = t.recipe
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


def classifier_size(cfg: TrialConfig) -> int:
    """``size``, else the set's default (the reference recipe: CIFAR at the reference's 50 px)."""
    if cfg.size:
        return cfg.size
    if cfg.classify_recipe == "reference":
        return REFERENCE_SIZES.get(classify_data.parse(cfg.data)[0], classify_data.default_size(cfg.data))
    return classify_data.default_size(cfg.data)


def classifier_lr(cfg: TrialConfig) -> float:
    """``class_lr``: Adam's step (``lth``) or SGD's (``reference``: 0.01 while ``class_lr`` is left unset)."""
    return REFERENCE_LR if cfg.classify_recipe == "reference" and cfg.class_lr == LTH_LR else cfg.class_lr


def training_of(cfg: TrialConfig, model: ModelConfig) -> Training:
    return Training(cfg.data, classify_data.data_key(cfg.data), classifier_size(cfg), cfg.examples, model, cfg.seed,
                    cfg.epochs, cfg.batch_size, classifier_lr(cfg), cfg.threads, cfg.device, cfg.classify_recipe)


def _check_size(cfg: TrialConfig, granularity: int) -> None:
    """``lth`` keeps lipsweep's image multiple; ``reference`` takes any side the hourglass's deepest level can
    still pad (its skips crop the upsampled path, like the reference's ``Concat``: 50 px for CIFAR)."""
    size = classifier_size(cfg)
    if cfg.classify_recipe == "reference":
        if size <= granularity:
            raise ConfigError("size", f"the classifier's images must be at least {granularity + 1} px "
                                      f"(depth {cfg.depth}), got {size}")
    elif size % granularity or size < 2 * granularity:
        raise ConfigError("size", f"the classifier's images must be a multiple of {granularity} px and at least "
                                  f"{2 * granularity} (depth {cfg.depth}), got {size}")


def parse(cfg: TrialConfig) -> ClassifyTrial:
    """Everything a classification trial reads, before any trial starts (one-line errors naming the field)."""
    object.__setattr__(cfg, "data", classify_data.absolute(cfg.data))  # before compact() carries it to workers
    if cfg.model != "dip":
        raise ConfigError("model", f"kind {cfg.kind!r} builds its classifier from the DIP hourglass; allowed: dip, "
                                   f"got {cfg.model!r}")
    check_choice("classify_recipe", cfg.classify_recipe, RECIPES)
    classify_data.check(cfg.data)
    target = cfg.chain()
    _check_size(cfg, target.run.model.granularity)
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
            how = ("trains on from the last level (the reference code)" if cfg.classify_recipe == "reference"
                   else "rewinds to theta_0 (LTH's loop)")
            raise ConfigError("rewind", f"a classification ticket {how}; allowed: 0")
    return ClassifyTrial(training_of(cfg, target.run.model), cfg.method, cfg.prune_fraction, cfg.levels, target, source)


def contents(trial: ClassifyTrial) -> list[str]:
    return [trial.training.data_key] if trial.training.data else []
