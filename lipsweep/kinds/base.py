"""What a trial is on the wire, and what a trial kind is.

The wire format is one flat, frozen table of fields (``TrialConfig``): YAML axes, ``--set``, Tune's spec,
MLflow params and the trial key all address fields by these names, each declared once below with its
default, where it goes in the DIP's nested configs (``section.name``) and whether it enters the trial key at
its default. A *trial kind* (the ``KINDS`` registry, filled in ``kinds/__init__.py``) declares the fields it
reads and parses them into its own frozen, typed config (``TrialConfig.typed``), which is all its runner
receives: a field the kind does not read is refused at a non-default value, naming the kinds that read it,
and a run's MLflow params are exactly the fields its kind reads, resolved. Nothing here knows Ray or MLflow.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import MISSING, asdict, dataclass, field, fields, replace
from typing import TYPE_CHECKING

from lipsweep.core.errors import ConfigError, check_choice, check_int
from lipsweep.core.keys import SCHEMA, content_key
from lipsweep.core.records import METRIC_KEYS, LevelRecord
from lipsweep.core.registry import Registry
from lipsweep.core.versions import code_part
from lipsweep.fitting.config import ProblemConfig, RunConfig, default_fit, target_products
from lipsweep.lottery.chain import ChainConfig
from lipsweep.priors import ModelConfig
from lipsweep.problems.images import catalog, check_image, content_hash, resolve
from lipsweep.problems.tasks import TASKS
from lipsweep.stopping.rule import StopRule

if TYPE_CHECKING:
    from lipsweep.lottery.tickets import Tickets

SECTIONS = ("problem", "model", "fit", "run", "chain", "stop")
NONE_WORDS = {"size": "native", "ema": "off", "burnin": "off", "stop_k": "off",
              "examples": "all"}  # what None means, as an MLflow param


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
    """One trial in the wire format; ``typed`` is its kind's parsed config. ``iters``/``reg_noise_std`` None
    = the task's default."""

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
    # own: rewind to this seed's theta_j; shared: every seed rewinds to seed 0's theta_j (the reference code's
    # one rewind file, Rewind_IMP.py; docs/science.md section 4, `rewind_source`)
    rewind_source: str = spec("own", "chain.rewind_source", keyed=False)
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
    # early stopping without the clean image (fitting/early_stop.py, issue 29): a detector on every fit
    early_stop: str = spec("none", "fit.early_stop", keyed=False)  # none, wmv or emv
    es_window: int | None = spec(None, "fit.es_window", keyed=False)  # None: a tenth of the fit, 25..100
    es_patience: int | None = spec(None, "fit.es_patience", keyed=False)  # None: a fifth of the fit
    es_alpha: float = spec(0.1, "fit.es_alpha", keyed=False)  # emv's weight
    es_stop: bool = spec(False, "fit.es_stop", keyed=False)  # end the fit once the detection is confirmed
    es_lag: int = spec(0, "fit.es_lag", keyed=False)  # return the output this many outputs after the minimum
    es_mask: bool = spec(False, "chain.es_mask", keyed=False)  # IMP: prune the weights at the detected iteration
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
    # which weights a level is scored with: the fine-tuned sparse generator, IMP and random alike (the reference
    # code, PGAN_random_IMP.py / Eval_sparse_PGAN_on_CS.py), or pretrained x mask (the paper's text, issue 27)
    gan_eval: str = spec("pretrained", keyed=False)
    # kind 'classify' (paper Fig. 6): the DIP hourglass with a linear head, IMP on a labelled image set
    epochs: int = spec(20, keyed=False)
    batch_size: int = spec(32, keyed=False)
    examples: int | None = spec(None, keyed=False)  # at most this many images per split (CPU scale); None: all
    class_lr: float = spec(0.001, keyed=False)  # the classifier's Adam step (``lr`` is the DIP fit's)
    # lth: pooling head, zero-padded input, Adam, rewind to theta_0 each level; reference: the reference code's
    # LTH_IMP_Classification.py (3-channel input convs fresh and unpruned, 1x1 conv -> Flatten -> Linear -> Sigmoid,
    # SGD 0.01/0.9/2e-4 with steps at 1/2 and 3/4 of the epochs, no rewinding), issue 27
    classify_recipe: str = spec("lth", keyed=False)
    device: str = spec("auto", "run.device", cosmetic=True)
    # where a result is computed (platforms.py): deterministic kernels (CUDA), and whether the platform enters
    # the store keys (false: one store serves every node; true: each platform computes its own results)
    deterministic: bool = spec(False, "run.deterministic", cosmetic=True)
    platform_key: bool = spec(False, keyed=False)

    def __post_init__(self) -> None:
        kind = KINDS.get(self.kind)
        self._normalise()
        self._absolute_images()
        self._refuse_unread(kind)
        for name in ("image", "source_image", "inpaint_mask"):
            if getattr(self, name):
                resolve(getattr(self, name), name)
        for img in (*self.multi_images, *self.source_multi_images):
            resolve(img, "multi_images")
        typed = kind.parse(self)
        object.__setattr__(self, "typed", typed)
        self._check_files(kind.multiple(typed))
        object.__setattr__(self, "_key", self._content_key())  # fixed when validated (it reads the files)

    def _normalise(self) -> None:
        """Lists held as tuples (one trial, one key), ``at_levels`` sorted and unique; shapes checked."""
        check_int("levels", self.levels, 0)
        if isinstance(self.sparsities, list):
            object.__setattr__(self, "sparsities", tuple(self.sparsities))
        if self.sparsities and self.levels > len(self.sparsities):
            raise ConfigError("levels", f"must be <= {len(self.sparsities)}, the number of target sparsities")
        for name in ("multi_images", "source_multi_images", "snapshots", "at_levels"):
            value = getattr(self, name)
            if isinstance(value, int) and name in ("snapshots", "at_levels"):
                value = (value,)
            if not isinstance(value, list | tuple):
                raise ConfigError(name, f"must be a list of {'image names' if 'images' in name else 'iterations'}, "
                                        f"got {value!r}")
            object.__setattr__(self, name, tuple(value))
        check_choice("channels", self.channels, (1, 3))
        if self.rewind_source == "shared" and (self.rewind == 0 or self.seed == 0):  # theta_0, or seed 0's own
            object.__setattr__(self, "rewind_source", "own")  # theta_j: the same trial, one key
        for name in ("deterministic", "platform_key"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(name, f"must be true or false, got {getattr(self, name)!r}")
        self._check_levels()

    def _absolute_images(self) -> None:
        """Image and mask files given relative to the directory the command runs in, made absolute once, here on
        the driver: ``compact()`` carries them to Ray workers, which run elsewhere. Shipped names stay names."""
        for name in ("image", "source_image", "inpaint_mask"):
            value = getattr(self, name)
            if isinstance(value, str):
                object.__setattr__(self, name, local_path(value, value in catalog()))
        for name in ("multi_images", "source_multi_images"):
            object.__setattr__(self, name, tuple(v if not isinstance(v, str) else local_path(v, v in catalog())
                                                 for v in getattr(self, name)))

    def _refuse_unread(self, kind: TrialKind) -> None:
        """A field the kind does not read, at a non-default value, is refused: it would be keyed, logged and
        silently ignored (one line naming the kinds that do read it)."""
        for f in fields(self):
            if f.name not in kind.reads and getattr(self, f.name) != f.default:
                readers = [n for n in KINDS.names() if f.name in KINDS.get(n).reads]
                raise ConfigError(f.name, f"kind {self.kind!r} does not read it (only kinds {', '.join(readers)} "
                                          f"do); allowed: {f.default!r}, its default, or leave it unset")

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
        return own + KINDS.get(self.kind).contents(self.typed)

    def sections(self, **overrides: object) -> dict[str, dict[str, object]]:
        """The declared fields grouped by the nested config they go to (``overrides``: by field name)."""
        out: dict[str, dict[str, object]] = {s: {} for s in SECTIONS}
        for f in fields(self):
            if f.metadata["to"]:
                section, name = f.metadata["to"].split(".")
                out[section][name] = overrides.get(f.name, getattr(self, f.name))
        return out

    def chain(self, **overrides: object) -> ChainConfig:
        """The DIP chain these fields describe (``overrides`` by field name: a source chain)."""
        s = self.sections(**overrides)
        problem, model = ProblemConfig(**s["problem"]), ModelConfig(**s["model"])
        run = RunConfig(problem=problem, model=model, fit=self._fit(problem.task, model.kind, s["fit"]), **s["run"])
        return ChainConfig(run=run, **s["chain"], platform=self._platform(run))

    def _platform(self, run: RunConfig) -> str | None:
        """``platform_key``: the fingerprint of this process's platform as the fit will run it (a Ray worker
        computes its own; the driver's ``show`` prices its own)."""
        if not self.platform_key:
            return None
        from lipsweep.core.platforms import planned
        from lipsweep.fitting.fit import resolve_device

        return planned(run.threads, resolve_device(run.device).type, run.deterministic).fingerprint

    def _fit(self, task: str, model: str, values: dict[str, object]):
        """The task's and prior's defaults, then every field given (its ``off`` value disables it)."""
        offs = {f.metadata["to"].split(".")[1]: f.metadata["off"] for f in fields(self)
                if f.metadata["off"] is not None and f.metadata["to"]}
        disabled = {k: None for k, v in values.items() if k in offs and v == offs[k]}
        fit = default_fit(task, model, **{k: v for k, v in values.items() if k not in disabled})
        return replace(fit, **disabled)

    def has_source(self) -> bool:
        return bool(self.source_image or self.source_task or self.source_multi_images)

    def source(self) -> ChainConfig:
        """The chain whose masks a transfer uses (defaults: the target's image and task)."""
        return self.chain(image=self.source_image or self.image, task=self.source_task or self.task,
                          multi_images=self.source_multi_images, inpaint_mask=None,
                          iters=self.source_iters or self.iters, target="image", snapshots=())

    def stop_rule(self) -> StopRule | None:
        return StopRule(**self.sections()["stop"]) if self.stop_k is not None else None

    def params(self) -> dict[str, object]:
        """What the MLflow runs table shows: the fields the trial's kind reads, with the values it really ran
        with (the task's and prior's defaults filled in), a word where None means something; never 'None'."""
        kind = KINDS.get(self.kind)
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name in kind.reads}
        out.update(kind.resolved(self.typed))
        if "inpaint_mask" in out and self.inpaint_mask is None and TASKS.get(self.task).mask_image:
            out["inpaint_mask"] = "bernoulli"
        out.update({k: word for k, word in NONE_WORDS.items() if k in out and out[k] is None})
        return {k: v for k, v in out.items() if v is not None}


def local_path(value: object, is_name: bool = False) -> object:
    """``value`` as an absolute path when it is a relative path to a file or folder that exists in the current
    directory: a Ray worker runs in another directory and would not find it. A name (``is_name``), an absolute
    or ``~`` path, or one that names nothing here (its check then says so) is returned as given."""
    if is_name or not isinstance(value, str) or not value or value.startswith("~") or os.path.isabs(value):
        return value
    return os.path.abspath(value) if os.path.exists(value) else value


def _keyed(f, value: object) -> bool:
    if f.metadata["cosmetic"]:
        return False
    return f.metadata["keyed"] or f.default is MISSING or value != f.default


FIELD_NAMES = tuple(f.name for f in fields(TrialConfig))
FIELD_DEFAULTS = {f.name: f.default for f in fields(TrialConfig)}  # every wire field has one


def fields_except(*names: str) -> frozenset[str]:
    """Every wire field but ``names``: how a kind that reads almost everything declares its reads."""
    return frozenset(FIELD_NAMES) - set(names)


@dataclass(frozen=True)
class TrialKind:
    """A registry entry. ``reads``: the wire fields it uses (any other is refused at a non-default value);
    ``parse``: the trial's typed config, validated (pure but for reading image headers); everything else takes
    the typed config: ``run`` yields the records, ``chains`` the DIP chains it fits (``found``, and where its
    masks are fitted, for ``lipsweep show``), ``multiple`` the pixel multiple its images are cropped to,
    ``found_key`` what Tune reports as the trial's chain; for kinds without DIP chains ``estimate``: (fits the
    store lacks, their CPU and GPU seconds), counting shared work once, and ``cost_model``: (where the CPU
    seconds come from, {"measured": bool, "note": where the GPU seconds come from}); ``ready``: what only running needs
    (e.g. a generator's weights), checked before Ray starts; ``contents``: other inputs, by content;
    ``products``: the stored results it reports, whose code versions enter the trial key; ``resolved``: the
    values a field really ran with, for the MLflow params; ``metrics``: the metrics its records report."""

    reads: frozenset[str]
    parse: Callable[[TrialConfig], object]
    run: Callable[[object, Tickets], Iterator[LevelRecord]]
    found_key: Callable[[object], str]
    chains: Callable[[object], tuple[ChainConfig | None, ChainConfig | None]] = field(default=lambda t: (None, None))
    multiple: Callable[[object], int] = field(default=lambda t: 1)
    estimate: Callable[[object, object, set], tuple[int, float, float]] | None = None
    cost_model: Callable[[], tuple[str, dict]] | None = None
    ready: Callable[[object], None] = field(default=lambda t: None)
    contents: Callable[[object], list[str]] = field(default=lambda t: [])
    products: tuple[str, ...] = ("dense", "chain")
    resolved: Callable[[object], dict[str, object]] = field(default=lambda t: {})
    metrics: tuple[str, ...] = (*METRIC_KEYS, "imp_loss")  # what its records report (an experiment's metric)


KINDS: Registry[TrialKind] = Registry("kind")  # entries: kinds/__init__.py


def run_trial(cfg: TrialConfig, tickets: Tickets) -> Iterator[LevelRecord]:
    """Yield one record per level (loaded from the store where it exists, fitted otherwise)."""
    return KINDS.get(cfg.kind).run(cfg.typed, tickets)
