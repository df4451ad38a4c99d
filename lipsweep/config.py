"""Typed, frozen configs validated at construction, with the per-task defaults of SPEC.md section 2."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace

from .errors import ConfigError, check_choice, check_positive
from .models import ModelConfig
from .tasks import TASKS

DEVICES = ("auto", "cpu", "cuda")

# (iterations, reg_noise_std, EMA weight, backtracking) per task for the DIP. sr8 follows the paper
# (4000 its, 0.05); the reference code's 2000 / 0.03 are reachable by overriding iters / reg_noise_std.
DIP_DEFAULTS: dict[str, tuple[int, float, float | None, bool]] = {
    "denoise": (3000, 1.0 / 30.0, 0.99, True),
    "inpaint": (3000, 0.03, None, False),
    "sr4": (2000, 0.03, None, False),
    "sr8": (4000, 0.05, None, False),
}
# The deep decoder takes no input noise (Heckel & Hand); 1900 iterations for denoising as in its paper.
DD_ITERS = {"denoise": 1900}


@dataclass(frozen=True)
class ProblemConfig:
    """What is restored: an image (shipped name or path), a task, an optional resize and inpainting mask."""

    image: str = "Set5/baby"
    task: str = "denoise"
    size: int | None = None
    inpaint_mask: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.image, str) or not self.image:
            raise ConfigError("image", "must be a shipped image name or a file path")
        check_choice("task", self.task, TASKS)
        if self.size is not None:
            if isinstance(self.size, bool) or not isinstance(self.size, int) or self.size <= 0:
                raise ConfigError("size", f"must be a positive integer (shorter side in px), got {self.size!r}")
        if self.inpaint_mask is not None and self.task != "inpaint":
            raise ConfigError("inpaint_mask", f"only applies to task 'inpaint', not {self.task!r}")


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

    def __post_init__(self) -> None:
        for name in ("iters", "backtrack_every", "curve_every"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ConfigError(name, f"must be a positive integer, got {value!r}")
        check_positive("lr", self.lr)
        check_positive("reg_noise_std", self.reg_noise_std, allow_zero=True)
        check_positive("backtrack_db", self.backtrack_db)
        check_positive("param_noise", self.param_noise, allow_zero=True)
        if self.ema is not None and not (isinstance(self.ema, float) and 0.0 < self.ema < 1.0):
            raise ConfigError("ema", f"must be null or a weight in (0, 1), got {self.ema!r}")


def default_fit(task: str, model: str = "dip", **overrides: object) -> FitConfig:
    """SPEC.md's per-task defaults, then explicit overrides (None values are ignored)."""
    check_choice("task", task, TASKS)
    iters, noise, ema, backtrack = DIP_DEFAULTS[task]
    if model == "deep_decoder":
        iters, noise = DD_ITERS.get(task, iters), 0.0
    base = FitConfig(iters=iters, reg_noise_std=noise, ema=ema, backtrack=backtrack)
    return replace(base, **{k: v for k, v in overrides.items() if v is not None})


@dataclass(frozen=True)
class RunConfig:
    """One fit: a pure function of this config (and the images it names)."""

    problem: ProblemConfig = field(default_factory=ProblemConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    fit: FitConfig = field(default_factory=FitConfig)
    seed: int = 0
    device: str = "auto"

    def __post_init__(self) -> None:
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ConfigError("seed", f"must be an integer >= 0, got {self.seed!r}")
        check_choice("device", self.device, DEVICES)

    def as_dict(self) -> dict:
        return asdict(self)


def build_run(*, image: str, task: str, size: int | None = None, inpaint_mask: str | None = None,
              model: str = "dip", width: int = 128, depth: int = 5, iters: int | None = None, lr: float | None = None,
              reg_noise_std: float | None = None, seed: int = 0, device: str = "auto", **fit: object) -> RunConfig:
    """A ``RunConfig`` from the flat fields users write (CLI flags, trial configs); None = the task default."""
    return RunConfig(
        problem=ProblemConfig(image=image, task=task, size=size, inpaint_mask=inpaint_mask),
        model=ModelConfig(kind=model, width=width, levels=depth),
        fit=default_fit(task, model, iters=iters, lr=lr, reg_noise_std=reg_noise_std, **fit),
        seed=seed, device=device)
