"""What a chain is (Algorithms 1 and 2): a dense run plus the method, rewind point and pruning schedule that
make its levels; its dense and chain keys name every stored level."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from functools import cached_property

from lipsweep.core.errors import ConfigError, check_choice, check_fraction, check_int
from lipsweep.core.keys import SCHEMA, content_key
from lipsweep.core.versions import code_part
from lipsweep.fitting.config import (
    LATER_PROBLEM_DEFAULTS,
    RunConfig,
    fit_payload,
    payload_without_later,
    target_products,
)
from lipsweep.priors import PRIORS
from lipsweep.problems.images import content_hash
from lipsweep.pruning.methods import METHODS

IMP_TARGETS = ("observation", "clean")
# After rewinding to theta_j: train N again (the paper's code), or the N - j that remain (Frankle et al.
# 2020), so that every rewind point gets the same budget (docs/science.md section 4).
REWIND_BUDGETS = ("full", "remaining")
# Whose theta_j a level rewinds to: its own dense run's, or seed 0's for every seed (the reference code keeps one
# rewind file for all inits, Rewind_IMP.py:113-118; docs/science.md section 4, `rewind_source`).
REWIND_SOURCES = ("own", "shared")


@dataclass(frozen=True)
class ChainConfig:
    """Everything that determines a chain's levels. ``run.device`` and ``run.fit.curve_every`` are cosmetic."""

    run: RunConfig = field(default_factory=RunConfig)
    method: str = "imp"
    rewind: float = 0.0
    rewind_budget: str = "full"
    rewind_source: str = "own"
    prune_fraction: float = 0.2
    sparsities: tuple[float, ...] = ()  # a target grid (Table 4: 0.2, 0.4, ...); empty = prune_fraction per level
    imp_target: str = "observation"
    keep_input_convs: bool = False
    multi_images: tuple[str, ...] = ()
    shared_z: bool = True
    synflow_rounds: int = 100
    # IMP under early stopping (issue 29): rank the weights at each fit's detected iteration, not its last one
    es_mask: bool = False
    # platform_key: the fingerprint of the platform that computes the chain (platforms.py); in the dense key, so
    # results of two platforms never serve each other. None (the default): results are shared across platforms.
    platform: str | None = None

    def __post_init__(self) -> None:
        METHODS.get(self.method)
        check_choice("imp_target", self.imp_target, IMP_TARGETS)
        check_choice("rewind_budget", self.rewind_budget, REWIND_BUDGETS)
        check_choice("rewind_source", self.rewind_source, REWIND_SOURCES)
        check_fraction("rewind", self.rewind, closed_low=True, what="a fraction of the dense run")
        check_fraction("prune_fraction", self.prune_fraction, closed_low=False)
        object.__setattr__(self, "sparsities", tuple(self.sparsities))
        for i, s in enumerate(self.sparsities):
            check_fraction("sparsities", s, closed_low=False, what="a target sparsity")
            if i and s <= self.sparsities[i - 1]:
                raise ConfigError("sparsities", f"must rise level by level, got {list(self.sparsities)}")
        if self.keep_input_convs and not PRIORS.get(self.run.model.kind).input_convs:
            with_inputs = [n for n, p in PRIORS.items() if p.input_convs]
            raise ConfigError("keep_input_convs", f"only applies to {', '.join(with_inputs)} (the reference code's "
                                                  "unpruned input convs)")
        check_int("synflow_rounds", self.synflow_rounds, 1)
        if not isinstance(self.es_mask, bool):
            raise ConfigError("es_mask", f"must be true or false, got {self.es_mask!r}")
        if self.es_mask and (self.run.fit.early_stop == "none" or not METHODS.get(self.method).sequential):
            sequential = [n for n, m in METHODS.items() if m.sequential]
            raise ConfigError("es_mask", f"prunes the weights at a fit's detected iteration, so it needs a detector "
                                         f"(early_stop) and a method that prunes trained weights; allowed: true with "
                                         f"method {', '.join(sequential)} and early_stop set, or false")
        if not self.multi_images:  # one image: z is its own either way, so the keys must not differ
            object.__setattr__(self, "shared_z", True)

    def dense_payload(self) -> dict:
        """What level 0 is a function of: images and inpainting mask by content (names kept for reading)."""
        fit = fit_payload(self.run.fit)
        mask = self.run.problem.inpaint_mask
        return {"schema": SCHEMA, "problem": payload_without_later(self.run.problem, LATER_PROBLEM_DEFAULTS),
                "model": asdict(self.run.model), "fit": fit,
                "seed": self.run.seed, **({"threads": self.run.threads} if self.run.threads != 1 else {}),
                "imp_target": self.imp_target, "multi_images": list(self.multi_images),
                "shared_z": self.shared_z, "content": [content_hash(img) for img in self.images],
                "inpaint_mask_content": content_hash(mask, "inpaint_mask") if mask else None, **code_part(*self.products),
                **({"platform": self.platform} if self.platform else {})}

    @property
    def products(self) -> tuple[str, ...]:
        """What level 0 is computed by (``versions.PRODUCTS``): the targets' code only where one is used."""
        return ("dense", *target_products(self.run.problem.target))

    @cached_property
    def dense_key(self) -> str:
        """Computed once per config (it hashes the image files; ``plan`` asks thousands of times): like a
        trial's key, it names the files as they were when first asked."""
        return content_key(self.dense_payload())

    def chain_payload(self) -> dict:
        payload = {"schema": SCHEMA, "dense": self.dense_key, "method": self.method, "rewind": float(self.rewind),
                   "level_iters": self.level_iters, "prune_fraction": self.prune_fraction,
                   "keep_input_convs": self.keep_input_convs, **code_part("chain")}
        payload.update({name: getattr(self, name) for name in METHODS.get(self.method).key_fields})
        if self.sparsities:
            payload["sparsities"] = list(self.sparsities)
        if self.rewind_source != "own" and self.rewind_iter and self.run.seed:  # seed 0 rewinds to its own either way
            payload["rewind_source"] = self.rewind_source
        if self.es_mask:
            payload["es_mask"] = True
        return payload

    @cached_property
    def chain_key(self) -> str:
        return content_key(self.chain_payload())

    @property
    def rewind_iter(self) -> int:
        return round(self.rewind * self.run.fit.iters)

    @property
    def level_iters(self) -> int:
        """Iterations of every pruned level's fit (level 0, the dense run, always trains N)."""
        return self.run.fit.iters - (self.rewind_iter if self.rewind_budget == "remaining" else 0)

    @property
    def frozen(self) -> tuple[str, ...]:
        return PRIORS.get(self.run.model.kind).input_convs if self.keep_input_convs else ()

    @property
    def images(self) -> tuple[str, ...]:
        return (self.run.problem.image, *self.multi_images)
