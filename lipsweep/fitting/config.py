"""Typed, frozen configs validated at construction: what a fit, a problem and a chain are, with the
per-task defaults of docs/science.md section 2 (declared by each task and prior in its registry entry)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace

from lipsweep.core.errors import (
    ConfigError,
    check_choice,
    check_int,
    check_positive,
)
from lipsweep.fitting.early_stop import DETECTORS, NONE, check_detector, default_patience, default_window
from lipsweep.priors import PRIORS, ModelConfig
from lipsweep.problems.targets import TARGETS
from lipsweep.problems.tasks import TASKS

DEVICES = ("auto", "cpu", "cuda")


@dataclass(frozen=True)
class ProblemConfig:
    """What is restored: an image (shipped name or path), a task, an optional resize and inpainting mask."""

    image: str = "Set5/baby"
    task: str = "denoise"
    size: int | None = None
    inpaint_mask: str | None = None
    target: str = "image"  # what is fitted: the image, or a stand-in made from it (targets.TARGETS; Fig. 10)

    def __post_init__(self) -> None:
        if not isinstance(self.image, str) or not self.image:
            raise ConfigError("image", "must be a shipped image name or a file path")
        task = TASKS.get(self.task)
        TARGETS.get(self.target)
        if self.size is not None:
            check_int("size", self.size, 1, " (shorter side in px)")
        if self.inpaint_mask is not None and not task.mask_image:
            allowed = [n for n, t in TASKS.items() if t.mask_image]
            raise ConfigError("inpaint_mask", f"only applies to task {', '.join(map(repr, allowed))}, not {self.task!r}")


@dataclass(frozen=True)
class FitConfig:
    """How a prior is fitted: Adam over all parameters, DIP's input noise, output EMA and backtracking."""

    iters: int = 3000
    lr: float = 0.01
    reg_noise_std: float = 1.0 / 30.0
    ema: float | None = 0.99
    backtrack: bool = True
    backtrack_every: int = 10
    backtrack_db: float = 5.0
    curve_every: int = 50
    param_noise: float = 0.0  # SGLD-DIP: weight noise std = param_noise * lr after each step (paper: 2)
    burnin: int | None = None  # SGLD-DIP: average the outputs after this many iterations (the posterior mean)
    sample_every: int = 50  # SGLD-DIP: one posterior sample every this many iterations after the burn-in
    snapshots: tuple[int, ...] = ()  # iterations whose output is kept as an image (Fig. 12)
    # early stopping without the clean image (early_stop.py, issue 29): a detector, its window and patience in
    # outputs (None: scaled to the budget), EMV's weight, and whether the fit ends once the detection is confirmed
    early_stop: str = "none"
    es_window: int | None = None
    es_patience: int | None = None
    es_alpha: float = 0.1
    es_stop: bool = False
    es_lag: int = 0  # return the output this many outputs after the minimum (the EMA's lag; 0: the notebooks)

    def __post_init__(self) -> None:
        for name in ("iters", "backtrack_every", "curve_every", "sample_every"):
            check_int(name, getattr(self, name), 1)
        if not isinstance(self.es_stop, bool):
            raise ConfigError("es_stop", f"must be true or false, got {self.es_stop!r}")
        if self.es_stop and self.early_stop == NONE:
            raise ConfigError("es_stop", "ends a fit at its detection, so it needs a detector; allowed: set "
                                         f"early_stop to one of {', '.join(DETECTORS.names())}, or es_stop false")
        if self.early_stop != NONE:  # the budget's defaults; the bounds are checked against it in RunConfig
            if self.es_window is None:
                object.__setattr__(self, "es_window", default_window(self.iters))
            if self.es_patience is None:
                object.__setattr__(self, "es_patience", default_patience(self.iters))
        check_detector(self.early_stop, self.es_window, self.es_patience, self.es_alpha, None, lag=self.es_lag)
        if self.burnin is not None:
            check_int("burnin", self.burnin, 0)
            if self.burnin >= self.iters:
                raise ConfigError("burnin", f"must be below the fit's {self.iters} iterations, got {self.burnin}; "
                                            f"allowed: 0..{self.iters - 1} or null (no posterior mean)")
        object.__setattr__(self, "snapshots", check_snapshots(self.snapshots, self.iters))
        check_positive("lr", self.lr)
        check_positive("reg_noise_std", self.reg_noise_std, allow_zero=True)
        check_positive("backtrack_db", self.backtrack_db)
        check_positive("param_noise", self.param_noise, allow_zero=True)
        if self.ema is not None and not (isinstance(self.ema, float) and 0.0 < self.ema < 1.0):
            raise ConfigError("ema", f"must be null or a weight in (0, 1), got {self.ema!r}")


# Fields added after keys were pinned: left out of a key while they hold these values, so earlier stores
# keep their keys.
LATER_FIT_DEFAULTS = {"burnin": None, "sample_every": 50, "snapshots": (), "early_stop": NONE, "es_window": None,
                      "es_patience": None, "es_alpha": 0.1, "es_stop": False, "es_lag": 0}
LATER_PROBLEM_DEFAULTS = {"target": "image"}


def payload_without_later(config: object, later: dict[str, object]) -> dict:
    """``asdict`` without the later fields that still hold their default."""
    return {k: v for k, v in asdict(config).items() if k not in later or v != later[k]}


def target_products(target: str) -> tuple[str, ...]:
    """The targets' code decides a result only where a target other than the image is fitted (Fig. 10)."""
    return ("target",) if target != "image" else ()


def check_snapshots(values: object, iters: int) -> tuple[int, ...]:
    """Snapshot iterations: rising integers within the fit (one line naming the bad one otherwise)."""
    if isinstance(values, int) and not isinstance(values, bool):
        values = (values,)
    if not isinstance(values, (list, tuple)):
        raise ConfigError("snapshots", f"must be a list of iterations, got {values!r}")
    for v in values:
        check_int("snapshots", v, 1)
        if v > iters:
            raise ConfigError("snapshots", f"iteration {v} is beyond the fit's {iters} iterations; allowed: 1..{iters}")
    return tuple(sorted(set(values)))


def fit_payload(fit: FitConfig) -> dict:
    """What a fit's results depend on: ``curve_every`` is cosmetic; later fields enter only when set."""
    out = payload_without_later(fit, LATER_FIT_DEFAULTS)
    out.pop("curve_every")
    return out


def default_fit(task: str, model: str = "dip", **overrides: object) -> FitConfig:
    """The per-task defaults (docs/science.md section 2), patched by the prior's, then explicit overrides (None values are ignored)."""
    t = TASKS.get(task)
    base = FitConfig(iters=t.iters, reg_noise_std=t.reg_noise_std, ema=t.ema, backtrack=t.backtrack)
    base = replace(base, **PRIORS.get(model).fit_defaults(task))
    return replace(base, **{k: v for k, v in overrides.items() if v is not None})


@dataclass(frozen=True)
class RunConfig:
    """One fit: a pure function of this config (and the images it names)."""

    problem: ProblemConfig = field(default_factory=ProblemConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    fit: FitConfig = field(default_factory=FitConfig)
    seed: int = 0
    device: str = "auto"
    threads: int = 1  # torch CPU threads: 1 and 2 threads give different sums, so results are keyed by it
    deterministic: bool = False  # torch's deterministic kernels, cuDNN's autotuner off (CUDA; platforms.py)

    def __post_init__(self) -> None:
        check_int("seed", self.seed, 0)
        check_choice("device", self.device, DEVICES)
        check_int("threads", self.threads, 1)
        if not isinstance(self.deterministic, bool):
            raise ConfigError("deterministic", f"must be true or false, got {self.deterministic!r}")
        fit = self.fit  # the detector against this fit's own budget and task (a replay may fit fewer iterations)
        check_detector(fit.early_stop, fit.es_window, fit.es_patience, fit.es_alpha, fit.iters, self.problem.task,
                       fit.es_lag)

    def as_dict(self) -> dict:
        return asdict(self)
