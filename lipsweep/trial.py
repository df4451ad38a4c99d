"""What a trial is: a flat, frozen config and a pure function that yields one record per IMP level.

Two kinds: a *chain* (one method on one image/task/seed/rewind; Fig. 3, 9, 13, 15, ...) and an
*evaluation* (the masks of a source chain, level by level, fitted on a target image/task: the transfer
experiments, Figs. 5 and 14). Both read through the trunk store, so a restarted trial resumes at its
last finished level and sweeps that share trunks reuse them. Nothing here knows Ray or MLflow.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import asdict, dataclass, fields, replace

from .config import build_run
from .errors import ConfigError, check_choice
from .images import resolve
from .stopping import StopRule
from .store import content_key
from .tickets import ChainConfig, Tickets

KINDS = ("chain", "evaluation")
COSMETIC = ("device",)  # fields that never change a trial's results, so never its key


@dataclass(frozen=True)
class TrialConfig:
    """One trial; every field is an MLflow param. ``iters``/``reg_noise_std`` None = the task's default."""

    kind: str = "chain"
    image: str = "Set5/baby"
    task: str = "denoise"
    size: int | None = None
    inpaint_mask: str | None = None
    model: str = "dip"
    width: int = 128
    depth: int = 5
    iters: int | None = None
    lr: float = 0.01
    reg_noise_std: float | None = None
    param_noise: float = 0.0
    seed: int = 0
    method: str = "imp"
    rewind: float = 0.0
    levels: int = 16
    imp_target: str = "observation"
    keep_input_convs: bool = False
    multi_images: tuple[str, ...] = ()
    shared_z: bool = True
    synflow_rounds: int = 100
    stop_k: int | None = None
    stop_tolerance: float = 0.0
    stop_keep_going: bool = False
    source_image: str | None = None
    source_task: str | None = None
    source_multi_images: tuple[str, ...] = ()
    device: str = "auto"

    def __post_init__(self) -> None:
        check_choice("kind", self.kind, KINDS)
        if isinstance(self.levels, bool) or not isinstance(self.levels, int) or self.levels < 0:
            raise ConfigError("levels", f"must be an integer >= 0, got {self.levels!r}")
        for name in ("multi_images", "source_multi_images"):
            value = getattr(self, name)
            if isinstance(value, list):
                object.__setattr__(self, name, tuple(value))
            elif not isinstance(value, tuple):
                raise ConfigError(name, f"must be a list of image names, got {value!r}")
        for name in ("image", *(["source_image"] if self.source_image else []),
                     *(["inpaint_mask"] if self.inpaint_mask else [])):
            resolve(getattr(self, name), name)
        for img in (*self.multi_images, *self.source_multi_images):
            resolve(img, "multi_images")
        if self.kind == "chain" and (self.source_image or self.source_task or self.source_multi_images):
            raise ConfigError("source_image", "only applies to kind 'evaluation' (where a mask was found)")
        self.chain()
        self.stop_rule()
        if self.kind == "evaluation":
            self.source()

    def as_dict(self) -> dict:
        return asdict(self)

    @property
    def key(self) -> str:
        """Content key: the same trial in any sweep, any process, any machine has the same key."""
        return content_key({k: v for k, v in asdict(self).items() if k not in COSMETIC})

    def chain(self) -> ChainConfig:
        run = build_run(image=self.image, task=self.task, size=self.size, inpaint_mask=self.inpaint_mask,
                        model=self.model, width=self.width, depth=self.depth, iters=self.iters, lr=self.lr,
                        reg_noise_std=self.reg_noise_std, seed=self.seed, device=self.device,
                        param_noise=self.param_noise)
        return ChainConfig(run=run, method=self.method, rewind=self.rewind, imp_target=self.imp_target,
                           keep_input_convs=self.keep_input_convs, multi_images=self.multi_images,
                           shared_z=self.shared_z, synflow_rounds=self.synflow_rounds)

    def source(self) -> ChainConfig:
        """The chain whose masks an evaluation trial transfers (defaults: the target's image and task)."""
        src = replace(self, kind="chain", image=self.source_image or self.image,
                      task=self.source_task or self.task, multi_images=self.source_multi_images,
                      inpaint_mask=None, source_image=None, source_task=None, source_multi_images=())
        return src.chain()

    def stop_rule(self) -> StopRule | None:
        return StopRule(k=self.stop_k, tolerance=self.stop_tolerance) if self.stop_k is not None else None


FIELD_NAMES = tuple(f.name for f in fields(TrialConfig))


def run_trial(cfg: TrialConfig, tickets: Tickets) -> Iterator[dict]:
    """Yield one record per level (loaded from the store where it exists, fitted otherwise)."""
    if cfg.kind == "chain":
        for rec, fired, chosen in tickets.iter_levels(cfg.chain(), cfg.levels, stop=cfg.stop_rule(),
                                                      keep_going=cfg.stop_keep_going):
            yield {**rec, "stop_fired_at": fired, "stop_chosen": chosen}
        return
    source, target = cfg.source(), cfg.chain()
    for level in range(cfg.levels + 1):
        if level == 0:
            yield {**tickets.dense(target), "source_mask": None}
            continue
        ref = f"{source.chain_key}/{level}"
        if source.chain_key == target.chain_key:  # a mask on its own image and task: the chain's level is it
            yield {**tickets.level(source, level), "source_mask": ref}
            continue
        yield {**tickets.evaluate(tickets.mask(source, level), target), "source_mask": ref}
