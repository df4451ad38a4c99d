"""What a trial is: one flat, frozen config declared field by field, and a pure function that yields one
record per IMP level.

Each field is declared once below: its default, where it goes in the nested configs (``section.name``),
and whether it enters the trial key at its default value. Validation is the nested configs' own (they
check at construction) plus the trial kind's. Trial kinds are a registry: a *chain* (one method on one
image/task/seed/rewind; Figs. 3, 9, 13, 15, ...) and an *evaluation* (a source chain's masks, level by
level, fitted on a target image/task: Figs. 5 and 14). Both read through the trunk store, so a restarted
trial resumes at its last finished level. Nothing here knows Ray or MLflow.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import MISSING, asdict, dataclass, field, fields, replace
from typing import TYPE_CHECKING

from .config import ChainConfig, ProblemConfig, RunConfig, default_fit, target_products
from .errors import ConfigError, check_choice, check_int
from .images import check_image, content_hash, resolve
from .priors import ModelConfig
from .records import LevelRecord
from .registry import Registry
from .stopping import StopRule
from .store import SCHEMA, content_key
from .tasks import TASKS
from .versions import code_part

if TYPE_CHECKING:
    from .tickets import Tickets

SECTIONS = ("problem", "model", "fit", "run", "chain", "stop")


def spec(default: object, to: str | None = None, *, keyed: bool = True, cosmetic: bool = False,
         off: object = None):
    """A trial field: ``to`` is ``section.name`` in the nested configs (None: the trial's own); ``keyed``
    False leaves the field out of the trial key while it has its default (fields added after trial keys
    were first pinned, so earlier sweeps keep their MLflow runs); ``cosmetic`` never enters the key.
    A fit field whose default None means "the task's / prior's default" may name the value ``off`` that
    sets it to None (disabled) explicitly."""
    return field(default=default, metadata={"to": to, "keyed": keyed, "cosmetic": cosmetic, "off": off})


@dataclass(frozen=True)
class TrialConfig:
    """One trial; every field is an MLflow param. ``iters``/``reg_noise_std`` None = the task's default."""

    kind: str = spec("chain")
    image: str = spec("Set5/baby", "problem.image")
    task: str = spec("denoise", "problem.task")
    size: int | None = spec(None, "problem.size")
    inpaint_mask: str | None = spec(None, "problem.inpaint_mask")
    model: str = spec("dip", "model.kind")
    width: int = spec(128, "model.width")
    depth: int = spec(5, "model.levels")
    iters: int | None = spec(None, "fit.iters")
    lr: float = spec(0.01, "fit.lr")
    reg_noise_std: float | None = spec(None, "fit.reg_noise_std")
    ema: float | None = spec(None, "fit.ema", off=0.0)  # None: the default (DIP denoising 0.99); 0: no EMA
    backtrack: bool | None = spec(None, "fit.backtrack")
    param_noise: float = spec(0.0, "fit.param_noise")
    seed: int = spec(0, "run.seed")
    threads: int = spec(1, "run.threads", keyed=False)  # a sweep sets it from resources.cpu
    method: str = spec("imp", "chain.method")
    rewind: float = spec(0.0, "chain.rewind")
    rewind_budget: str = spec("full", "chain.rewind_budget")
    prune_fraction: float = spec(0.2, "chain.prune_fraction", keyed=False)
    sparsities: tuple[float, ...] = spec((), "chain.sparsities")
    levels: int = spec(16)
    imp_target: str = spec("observation", "chain.imp_target")
    keep_input_convs: bool = spec(False, "chain.keep_input_convs")
    multi_images: tuple[str, ...] = spec((), "chain.multi_images")
    shared_z: bool = spec(True, "chain.shared_z")
    synflow_rounds: int = spec(100, "chain.synflow_rounds")
    target: str = spec("image", "problem.target", keyed=False)  # Fig. 10: image, permuted or noise
    channels: int = spec(3, "model.out_channels", keyed=False)  # 1: grey images, a 1-channel net (Table 5)
    snapshots: tuple[int, ...] = spec((), "fit.snapshots", keyed=False)  # iterations kept as images (Fig. 12)
    burnin: int | None = spec(None, "fit.burnin", keyed=False)  # SGLD-DIP's posterior mean (Fig. 16)
    sample_every: int = spec(50, "fit.sample_every", keyed=False)
    at_levels: tuple[int, ...] = spec((), keyed=False)  # evaluation: only these levels (Fig. 10: one sparsity)
    stop_k: int | None = spec(None, "stop.k")
    stop_tolerance: float = spec(0.0, "stop.tolerance")
    stop_keep_going: bool = spec(False)
    source_image: str | None = spec(None)
    source_task: str | None = spec(None)
    source_multi_images: tuple[str, ...] = spec(())
    source_iters: int | None = spec(None, keyed=False)  # the source chain's iterations (None: the trial's)
    # kind 'gan' (paper Section 5): a pretrained generator, its IMP fine-tuning, and latent optimisation
    generator: str | None = spec(None, keyed=False)  # a shipped generator name or a PGAN checkpoint path
    data: str | None = spec(None, keyed=False)  # fine-tuning images (None: the generator's own training split)
    tune_epochs: int = spec(30, keyed=False)
    tune_fraction: float = spec(0.4, keyed=False)
    latent: int | None = spec(None, keyed=False)  # None: the generator's; a different value is refused
    measurements: int = spec(1000, keyed=False)  # cs: rows of A, outliers included (980 + 20)
    outliers: int = spec(20, keyed=False)
    objective: str | None = spec(None, keyed=False)  # None: mom for cs, ls otherwise
    restarts: int = spec(1, keyed=False)
    # kind 'classify' (paper Fig. 6): the DIP hourglass with a linear head, IMP on a labelled image set
    epochs: int = spec(20, keyed=False)
    batch_size: int = spec(32, keyed=False)
    examples: int | None = spec(None, keyed=False)  # at most this many images per split (CPU scale); None: all
    class_lr: float = spec(0.001, keyed=False)  # the classifier's Adam step (``lr`` is the DIP fit's)
    device: str = spec("auto", "run.device", cosmetic=True)
    # where a result is computed (platforms.py): deterministic kernels (CUDA), and whether the platform enters
    # the store keys (false: one store serves every node; true: each platform computes its own results)
    deterministic: bool = spec(False, "run.deterministic", cosmetic=True)
    platform_key: bool = spec(False, keyed=False)

    def __post_init__(self) -> None:
        kind = KINDS.get(self.kind)
        check_int("levels", self.levels, 0)
        if isinstance(self.sparsities, list):
            object.__setattr__(self, "sparsities", tuple(self.sparsities))
        if self.sparsities and self.levels > len(self.sparsities):
            raise ConfigError("levels", f"must be <= {len(self.sparsities)}, the number of target sparsities")
        for name in ("multi_images", "source_multi_images", "snapshots", "at_levels"):
            value = getattr(self, name)
            if isinstance(value, int) and name in ("snapshots", "at_levels"):
                value = (value,)
            if isinstance(value, list | tuple):
                object.__setattr__(self, name, tuple(value))
            else:
                raise ConfigError(name, f"must be a list of {'image names' if 'images' in name else 'iterations'}, "
                                        f"got {value!r}")
        check_choice("channels", self.channels, (1, 3))
        self._check_levels()
        for name in ("image", "source_image", "inpaint_mask"):
            if getattr(self, name):
                resolve(getattr(self, name), name)
        for img in (*self.multi_images, *self.source_multi_images):
            resolve(img, "multi_images")
        self.stop_rule()
        self._check_platform()
        kind.check(self)
        self._check_files(kind.multiple(self))
        object.__setattr__(self, "_key", self._content_key())  # fixed when validated (it reads the files)

    def as_dict(self) -> dict:
        return asdict(self)

    def compact(self) -> dict:
        """The fields that differ from their defaults: what a Tune trial carries (``TrialConfig(**compact)``
        is the same trial), so the param space and Tune's state grow by a few fields per trial, not ~60."""
        return {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) != f.default}

    def _check_levels(self) -> None:
        """``at_levels`` within the trial's levels, held sorted and unique (one trial, one key)."""
        for lvl in self.at_levels:
            check_int("at_levels", lvl, 1)
            if lvl > self.levels:
                raise ConfigError("at_levels", f"level {lvl} is beyond the trial's {self.levels} levels; allowed: "
                                               f"1..{self.levels}")
        object.__setattr__(self, "at_levels", tuple(sorted(set(self.at_levels))))

    def _check_platform(self) -> None:
        """The platform fields steer DIP fits only: refused where a kind would ignore them."""
        for name in ("deterministic", "platform_key"):
            value = getattr(self, name)
            if not isinstance(value, bool):
                raise ConfigError(name, f"must be true or false, got {value!r}")
            if value and self.kind in NO_DIP_FITS:
                raise ConfigError(name, f"only applies to kinds that fit the DIP ({', '.join(DIP_FIT_KINDS)}), "
                                        f"not {self.kind!r}")

    def _check_files(self, multiple: int) -> None:
        """Every image readable and big enough at this size, an inpainting mask the size of its image: refused
        here, not three times inside a trial."""
        sizes = {name: check_image(name, self.size, multiple, field=name_field)
                 for name_field, names in (("image", (self.image,)), ("multi_images", self.multi_images),
                                           ("source_image", (self.source_image,)),
                                           ("source_multi_images", self.source_multi_images))
                 for name in names if name}
        if self.inpaint_mask:
            mask = check_image(self.inpaint_mask, None, 1, 1, "inpaint_mask")
            if mask != sizes[self.image]:
                raise ConfigError("inpaint_mask", f"mask file is {mask[0]}x{mask[1]} but the image file is "
                                                  f"{sizes[self.image][0]}x{sizes[self.image][1]}; use a mask made "
                                                  "for this image")

    @property
    def key(self) -> str:
        """Content key: the same trial in any sweep, any process, any machine has the same key."""
        return self._key

    def _content_key(self) -> str:
        payload = {f.name: getattr(self, f.name) for f in fields(self) if _keyed(f, getattr(self, f.name))}
        return content_key({**payload, "schema": SCHEMA, "content": self.contents(),
                            **code_part(*KINDS.get(self.kind).products, *target_products(self.target))})

    def contents(self) -> list[str]:
        """Content hashes of every file the trial reads (images, source images, inpainting mask, and what its
        kind reads besides: a generator checkpoint, its fine-tuning data)."""
        files = [self.image, *self.multi_images, self.source_image, *self.source_multi_images, self.inpaint_mask]
        own = [content_hash(f, "inpaint_mask" if f == self.inpaint_mask else "image") for f in files if f]
        return own + KINDS.get(self.kind).contents(self)

    def sections(self) -> dict[str, dict[str, object]]:
        """The declared fields grouped by the nested config they go to."""
        out: dict[str, dict[str, object]] = {s: {} for s in SECTIONS}
        for f in fields(self):
            if f.metadata["to"]:
                section, name = f.metadata["to"].split(".")
                out[section][name] = getattr(self, f.name)
        return out

    def chain(self) -> ChainConfig:
        s = self.sections()
        problem, model = ProblemConfig(**s["problem"]), ModelConfig(**s["model"])
        run = RunConfig(problem=problem, model=model, fit=self._fit(problem.task, model.kind, s["fit"]), **s["run"])
        return ChainConfig(run=run, **s["chain"], platform=self._platform(run))

    def _platform(self, run: RunConfig) -> str | None:
        """``platform_key``: the fingerprint of this process's platform as the fit will run it (a Ray worker
        computes its own; the driver's ``show`` prices its own)."""
        if not self.platform_key:
            return None
        from .fit import resolve_device
        from .platforms import planned

        return planned(run.threads, resolve_device(run.device).type, run.deterministic).fingerprint

    def _fit(self, task: str, model: str, values: dict[str, object]):
        """The task's and prior's defaults, then every field given (its ``off`` value disables it)."""
        offs = {f.metadata["to"].split(".")[1]: f.metadata["off"] for f in fields(self)
                if f.metadata["off"] is not None and f.metadata["to"]}
        disabled = {k: None for k, v in values.items() if k in offs and v == offs[k]}
        fit = default_fit(task, model, **{k: v for k, v in values.items() if k not in disabled})
        return replace(fit, **disabled)

    def source(self) -> ChainConfig:
        """The chain whose masks an evaluation trial transfers (defaults: the target's image and task)."""
        src = replace(self, kind="chain", image=self.source_image or self.image,
                      task=self.source_task or self.task, multi_images=self.source_multi_images,
                      inpaint_mask=None, source_image=None, source_task=None, source_multi_images=(),
                      iters=self.source_iters or self.iters, source_iters=None, target="image", snapshots=(),
                      at_levels=())
        return src.chain()

    def stop_rule(self) -> StopRule | None:
        return StopRule(**self.sections()["stop"]) if self.stop_k is not None else None

    def params(self) -> dict[str, object]:
        """What the MLflow runs table shows: the values the trial really ran with (the task's and prior's
        default iterations, input noise, EMA and backtracking filled in), a word where None means something,
        and none of the fields its kind ignores; never the string 'None'."""
        out = {k: v for k, v in self.as_dict().items() if k not in IGNORED.get(self.kind, IGNORED["chain"])}
        if self.kind in ("chain", "evaluation", "classify_transfer"):
            fit = self.chain().run.fit
            out.update(iters=fit.iters, lr=fit.lr, reg_noise_std=fit.reg_noise_std, ema=fit.ema,
                       backtrack=fit.backtrack)
            if self.kind == "evaluation":
                out.update(source_iters=self.source_iters or fit.iters, source_image=self.source_image or self.image,
                           source_task=self.source_task or self.task)
        if self.inpaint_mask is None and TASKS.get(self.task).mask_image:
            out["inpaint_mask"] = "bernoulli"
        out.update({k: word for k, word in NONE_WORDS.items() if k in out and out[k] is None})
        return {k: v for k, v in out.items() if v is not None}


def _keyed(f, value: object) -> bool:
    if f.metadata["cosmetic"]:
        return False
    return f.metadata["keyed"] or f.default is MISSING or value != f.default


FIELD_NAMES = tuple(f.name for f in fields(TrialConfig))


GAN_FIELDS = ("generator", "data", "tune_epochs", "tune_fraction", "latent", "measurements", "outliers", "objective",
              "restarts")
CLASSIFY_FIELDS = ("epochs", "batch_size", "examples", "class_lr")
SOURCE_FIELDS = ("source_image", "source_task", "source_multi_images", "source_iters", "at_levels")
CLASSIFY_IGNORES = tuple(f for f in GAN_FIELDS if f != "data")  # ``data``: the labelled set it trains on
IGNORED = {"chain": (*GAN_FIELDS, *CLASSIFY_FIELDS, *SOURCE_FIELDS), "evaluation": (*GAN_FIELDS, *CLASSIFY_FIELDS),
           "gan": CLASSIFY_FIELDS, "classify": CLASSIFY_IGNORES, "classify_transfer": CLASSIFY_IGNORES}  # MLflow params
DIP_FIT_KINDS = ("chain", "evaluation", "classify_transfer")
NO_DIP_FITS = ("gan", "classify")
NONE_WORDS = {"size": "native", "ema": "off", "burnin": "off", "stop_k": "off",
              "examples": "all"}  # what None means, as an MLflow param


def only_for(cfg: TrialConfig, kind: str, names: tuple[str, ...]) -> None:
    """Refuse a field that the trial's kind would silently ignore."""
    defaults = {f.name: f.default for f in fields(TrialConfig)}
    for name in names:
        if getattr(cfg, name) != defaults[name]:
            raise ConfigError(name, f"only applies to kind {kind!r}, not {cfg.kind!r}")


def _granularity(cfg: TrialConfig) -> int:
    return cfg.chain().run.model.granularity


@dataclass(frozen=True)
class TrialKind:
    """A registry entry: the records a trial yields, the chains it fits (``found``: the chain whose levels
    are found; ``evaluated_on``: where its masks are fitted, None for a plain chain), a config check (it
    builds the nested configs, so it validates them), the pixel multiple its images are cropped to,
    ``found_key`` (what Tune reports as the trial's chain), for kinds without DIP chains ``estimate``:
    (fits the store lacks, their CPU and GPU seconds) for ``lipsweep show``, counting shared work once, and ``ready``:
    what only running needs (e.g. a generator's weights), checked before Ray starts; ``products``: the stored
    results it reports, whose code versions enter the trial key (an edited module gives new MLflow runs)."""

    run: Callable[[TrialConfig, Tickets], Iterator[LevelRecord]]
    chains: Callable[[TrialConfig], tuple[ChainConfig, ChainConfig | None]]
    check: Callable[[TrialConfig], None]
    multiple: Callable[[TrialConfig], int] = _granularity
    found_key: Callable[[TrialConfig], str] = field(default=lambda t: t.chain().chain_key)
    estimate: Callable[[TrialConfig, object, set], tuple[int, float, float]] | None = None
    ready: Callable[[TrialConfig], None] = field(default=lambda t: None)  # run-only checks (``show`` skips them)
    contents: Callable[[TrialConfig], list[str]] = field(default=lambda t: [])  # other inputs, by content
    products: tuple[str, ...] = ("dense", "chain")  # whose code versions enter its key (versions.PRODUCTS)


KINDS: Registry[TrialKind] = Registry("kind")


def run_trial(cfg: TrialConfig, tickets: Tickets) -> Iterator[LevelRecord]:
    """Yield one record per level (loaded from the store where it exists, fitted otherwise)."""
    return KINDS.get(cfg.kind).run(cfg, tickets)


def _run_chain(cfg: TrialConfig, tickets: Tickets) -> Iterator[LevelRecord]:
    return tickets.iter_levels(cfg.chain(), cfg.levels, stop=cfg.stop_rule(), keep_going=cfg.stop_keep_going)


def _check_chain(cfg: TrialConfig) -> None:
    cfg.chain()
    only_for(cfg, "gan", GAN_FIELDS)
    only_for(cfg, "classify", CLASSIFY_FIELDS)
    only_for(cfg, "evaluation", ("at_levels", "source_iters"))
    if cfg.source_image or cfg.source_task or cfg.source_multi_images:
        raise ConfigError("source_image", "only applies to kind 'evaluation' (where a mask was found)")


def _check_evaluation(cfg: TrialConfig) -> None:
    cfg.chain()
    only_for(cfg, "gan", GAN_FIELDS)
    only_for(cfg, "classify", CLASSIFY_FIELDS)
    cfg.source()


def _run_evaluation(cfg: TrialConfig, tickets: Tickets) -> Iterator[LevelRecord]:
    source, target = cfg.source(), cfg.chain()
    yield tickets.dense(target)
    for level in cfg.at_levels or range(1, cfg.levels + 1):
        ref = f"{source.chain_key}/{level}"
        if source.chain_key == target.chain_key:  # a mask on its own image and task: the chain's level is it
            yield replace(tickets.level(source, level), source_mask=ref)
        else:
            yield replace(tickets.evaluate(tickets.mask(source, level), target), source_mask=ref)


KINDS.register("chain", TrialKind(run=_run_chain, chains=lambda t: (t.chain(), None), check=_check_chain))
KINDS.register("evaluation", TrialKind(run=_run_evaluation, chains=lambda t: (t.source(), t.chain()),
                                       check=_check_evaluation, products=("dense", "chain", "evaluation")))

# Kinds whose modules need torch: imported, and registered, when a trial of theirs is first made.
KINDS.defer("gan", "lipsweep.gan")  # a pretrained generator (paper Section 5)
KINDS.defer("classify", "lipsweep.classify")  # the hourglass as a classifier (paper Fig. 6)
KINDS.defer("classify_transfer", "lipsweep.classify")
