"""What a GAN trial is (paper Section 5; Table 1, Fig. 8): a generator mask chain (the *ticket*: fine-tune,
prune, rewind to the pretrained weights) and the latent fits that restore one degraded image with each of its
masks. Typed, frozen, validated from the wire fields the kind reads; nothing here runs anything."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from functools import cached_property
from pathlib import Path

from lipsweep.core.errors import ConfigError, check_choice, check_fraction, check_int, check_positive
from lipsweep.core.keys import SCHEMA, content_key
from lipsweep.core.versions import code_part
from lipsweep.fitting.latent import LatentConfig
from lipsweep.kinds.base import TrialConfig, local_path
from lipsweep.kinds.gan.generators import GENERATORS, GeneratorInfo, data_key, generator_info, image_files
from lipsweep.priors import PRIORS
from lipsweep.problems.images import check_image, content_hash
from lipsweep.problems.tasks import TASKS
from lipsweep.pruning.methods import METHODS, nested_methods

OBJECTIVES = ("mom", "ls")
# which weights a level is scored with (docs/science.md sections 1 and 7, `gan_eval`): the reference code's fine-tuned sparse
# generator, or the paper's text read literally, pretrained x mask (lipsweep's reading before issue 27)
GAN_EVALS = ("finetuned", "pretrained")
DEFAULT_OBJECTIVE = {"cs": "mom"}  # Jalal et al.'s robust objective for CS; plain least squares elsewhere
CS_NOISE = 0.01
READS = frozenset({"kind", "image", "task", "size", "model", "iters", "lr", "seed", "threads", "method",
                   "prune_fraction", "levels", "generator", "data", "tune_epochs", "tune_fraction", "latent",
                   "measurements", "outliers", "objective", "restarts", "gan_eval"})


@dataclass(frozen=True)
class GanTicket:
    """What a generator mask chain is a function of (the paper's loop: fine-tune, prune, rewind)."""

    generator: GeneratorInfo
    method: str
    prune_fraction: float
    epochs: int
    fraction: float
    data: str | None
    seed: int
    threads: int
    protocol: str = "pretrained"  # gan_eval

    @property
    def finetuned(self) -> bool:
        return self.protocol == "finetuned"

    @property
    def tunes(self) -> bool:
        """IMP ranks fine-tuned weights; under ``finetuned`` every method's levels are scored fine-tuned."""
        return METHODS.get(self.method).trains or self.finetuned

    def payload(self) -> dict:
        out = {"schema": SCHEMA, "kind": "gan_ticket", "generator": self.generator.content_hash,
               "method": self.method, "prune_fraction": self.prune_fraction, "seed": self.seed, **code_part("gan")}
        if self.tunes:
            out.update(epochs=self.epochs, fraction=self.fraction, data=self.data_hash)
            if self.threads != 1:
                out["threads"] = self.threads
        if self.finetuned:  # the reference recipe ranks IMP's weights: a store never mixes the two protocols
            out["gan_eval"] = self.protocol
        return out

    def tune_payload(self, level: int, mask_hash: str) -> dict:
        """The generator fine-tuned under level ``level``'s mask (hash ``mask_hash``) with the reference recipe:
        no method in it, so IMP and random share the dense fine-tuning (level 0)."""
        out = {"schema": SCHEMA, "kind": "gan_tune", "generator": self.generator.content_hash, "mask": mask_hash,
               "level": level, "recipe": "reference", "epochs": self.epochs, "fraction": self.fraction,
               "data": self.data_hash, "seed": self.seed, **code_part("gan")}
        if self.threads != 1:
            out["threads"] = self.threads
        return out

    def tune_key(self, level: int, mask_hash: str) -> str:
        return content_key(self.tune_payload(level, mask_hash))

    @cached_property
    def data_hash(self) -> str:
        """Computed once: a data folder's key hashes every file (asked for at every level)."""
        return data_key(self.data, self.generator)

    @cached_property
    def key(self) -> str:
        return content_key(self.payload())


@dataclass(frozen=True)
class GanEval:
    """One degraded image restored by a ticket's masks, level by level."""

    ticket: GanTicket
    image: str
    task: str
    measurements: int
    outliers: int
    fit: LatentConfig
    seed: int

    def payload(self, mask_hash: str, weights: str | None = None) -> dict:
        """``weights``: the fine-tuned generator's tune key (``gan_eval: finetuned``); None: pretrained x mask."""
        fit = asdict(self.fit)
        fit.pop("curve_every", None)
        out = {"schema": SCHEMA, "kind": "gan_eval", "generator": self.ticket.generator.content_hash,
               "mask": mask_hash, "image": content_hash(self.image), "task": self.task, "fit": fit,
               "seed": self.seed, **code_part("gan")}
        if self.task == "cs":
            out.update(measurements=self.measurements, outliers=self.outliers, noise=CS_NOISE)
        if self.ticket.threads != 1:
            out["threads"] = self.ticket.threads
        if weights is not None:
            out.update(gan_eval="finetuned", weights=weights)
        return out

    def key(self, mask_hash: str, weights: str | None = None) -> str:
        return content_key(self.payload(mask_hash, weights))


@dataclass(frozen=True)
class GanTrial:
    """Levels 0..``levels`` of ``eval``: each level's ticket mask, then its latent fit."""

    eval: GanEval
    levels: int
    generator: str | None = None  # as the trial names it (a shipped name or a checkpoint path)


def gan_eval(cfg: TrialConfig) -> GanEval:
    info = generator_info(cfg.generator)
    ticket = GanTicket(info, cfg.method, cfg.prune_fraction, cfg.tune_epochs, cfg.tune_fraction, cfg.data, cfg.seed,
                       cfg.threads, cfg.gan_eval)
    objective = cfg.objective or DEFAULT_OBJECTIVE.get(cfg.task, "ls")
    iters = cfg.iters if cfg.iters is not None else TASKS.get(cfg.task).iters
    # reshuffle: a fresh MOM partition per step, as the paper's script (Eval_sparse_PGAN_on_CS.py, mom_obj)
    fit = LatentConfig(iters=iters, lr=cfg.lr, restarts=cfg.restarts, objective=objective, reshuffle=True)
    return GanEval(ticket, cfg.image, cfg.task, cfg.measurements, cfg.outliers, fit, cfg.seed)


def tuned_path(store, key: str) -> Path:
    """Where a fine-tuned generator (``gan_eval: finetuned``) lives: ``gan/tuned/<tune_key>.pt``, keyed by its
    fine-tuning, not by method, so IMP and random share the dense one."""
    return store.paths.root / "gan" / "tuned" / f"{key}.pt"


def parse(cfg: TrialConfig) -> GanTrial:
    """Generator, method, latent, image size, objective and CS sizes, before any trial starts."""
    _absolute(cfg)
    info = generator_info(cfg.generator)
    if cfg.method not in nested_methods():
        METHODS.get(cfg.method)
        raise ConfigError("method", f"kind 'gan' nests each level's mask in the last; allowed: "
                                    f"{', '.join(nested_methods())}, got {cfg.method!r}")
    TASKS.get(cfg.task)
    if not PRIORS.get(cfg.model).pretrained:
        allowed = [n for n, p in PRIORS.items() if p.pretrained]
        raise ConfigError("model", f"kind 'gan' fits a pretrained generator; allowed: {', '.join(allowed)}, got {cfg.model!r}")
    if cfg.latent is not None and cfg.latent != info.latent:
        raise ConfigError("latent", f"the generator {Path(info.path).name} has latent size {info.latent}, got {cfg.latent}")
    if cfg.size is not None and cfg.size != info.size:
        raise ConfigError("size", f"the generator {Path(info.path).name} makes {info.size} px images; allowed: "
                                  f"{info.size} (or leave size unset)")
    if cfg.objective is not None:
        check_choice("objective", cfg.objective, OBJECTIVES)
    check_choice("gan_eval", cfg.gan_eval, GAN_EVALS)
    for name in ("tune_epochs", "restarts"):
        check_int(name, getattr(cfg, name), 1)
    check_fraction("tune_fraction", cfg.tune_fraction, closed_low=False)
    check_fraction("prune_fraction", cfg.prune_fraction, closed_low=False)
    check_positive("lr", cfg.lr)
    _check_cs(cfg, info)
    if cfg.data is not None:  # every file readable, before any trial starts (headers only, cached)
        for path in image_files(cfg.data):
            check_image(str(path), None, 1, 1, field="data")
    return GanTrial(gan_eval(cfg), cfg.levels, cfg.generator)


def _absolute(cfg: TrialConfig) -> None:
    """A checkpoint or data folder given relative to the directory the command runs in, made absolute on the
    driver (``compact()`` carries it to Ray workers, which run elsewhere); a registered generator stays a name."""
    object.__setattr__(cfg, "generator", local_path(cfg.generator, cfg.generator in GENERATORS))
    object.__setattr__(cfg, "data", local_path(cfg.data))


def _check_cs(cfg: TrialConfig, info: GeneratorInfo) -> None:
    n = info.size * info.size * info.channels
    check_int("measurements", cfg.measurements, 1)
    check_int("outliers", cfg.outliers, 0)
    if cfg.task == "cs" and cfg.measurements > n:
        raise ConfigError("measurements", f"must be <= the image dimension {n} ({info.size}x{info.size}x"
                                          f"{info.channels}), got {cfg.measurements}")
    if cfg.outliers >= cfg.measurements:
        raise ConfigError("outliers", f"must be < measurements ({cfg.measurements}), got {cfg.outliers}")


def ready(trial: GanTrial) -> None:
    """What only running needs (``lipsweep show`` prices a sweep without it): the generator's weights, and
    fine-tuning data for a generator that does not record its own."""
    ticket = trial.eval.ticket
    info = ticket.generator
    if not info.path:
        raise ConfigError("generator", f"{trial.generator}: {GENERATORS.get(trial.generator).how}")
    if ticket.data is None and info.data is None and ticket.tunes:
        raise ConfigError("data", f"the generator {Path(info.path).name} does not record its training data; allowed: "
                                  "a folder of images to fine-tune on (the paper: CelebA-HQ; --set data=DIR)")
    if ticket.data is None and ticket.tunes and not _portable(info.data):
        raise ConfigError("data", f"the generator {Path(info.path).name} records its training data as the relative "
                                  f"path {info.data!r}, which Ray workers cannot find; allowed: retrain it (`lipsweep "
                                  "gan train` now records the absolute path) or give a folder (--set data=DIR)")


def _portable(data: str) -> bool:
    """Recorded training data a worker can find: scikit-image's LFW faces or an absolute (or ``~``) path."""
    return isinstance(data, str) and (data == "lfw" or data.startswith("~") or Path(data).is_absolute())


def contents(trial: GanTrial) -> list[str]:
    ticket = trial.eval.ticket
    return [ticket.generator.content_hash, *([data_key(ticket.data, ticket.generator)] if ticket.data else [])]
