"""Lottery tickets: IMP chains with rewinding (Algorithms 1 and 2), the other mask methods, and transfer
evaluation, all read through and written to the trunk store so no fit and no mask is computed twice.

Level 0 is the dense fit from theta_0; level L (IMP) trains, from theta_rewind, the mask that prunes 20%
of the conv weights remaining after level L-1, for the full N iterations (Algorithm 1 trains N epochs
per round). Each level's fit *is* the isolated training of its mask, so its record is the evaluation.
Random / SNIP / SynFlow levels keep exactly as many weights as IMP's level L, so curves line up.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, replace

import numpy as np
import torch

from .config import RunConfig
from .errors import ConfigError, check_choice
from .fit import FitResult, fit_many, prepare
from .masks import MaskSet
from .models import build_model, make_input
from .pruning import (INPUT_CONVS, METHODS, keep_top, level_counts, magnitude_step, prunable_total,
                      random_profile, random_uniform, snip_scores, synflow)
from .stopping import StopRule
from .store import TrunkStore, content_key
from .tasks import Problem, stable_seed

IMP_TARGETS = ("observation", "clean")
STANDARD_REWINDS = (0.05, 0.10, 0.20)  # the paper's ablation: saved with every dense run
METRIC_KEYS = ("psnr_final", "psnr_ema", "psnr_peak", "peak_iter", "ssim_final", "ssim_ema", "psnr_observation",
               "ypsnr_final", "ypsnr_peak", "ypsnr_observation")


@dataclass(frozen=True)
class ChainConfig:
    """Everything that determines a chain's levels. ``run.device`` and ``run.fit.curve_every`` are cosmetic."""

    run: RunConfig = field(default_factory=RunConfig)
    method: str = "imp"
    rewind: float = 0.0
    prune_fraction: float = 0.2
    imp_target: str = "observation"
    keep_input_convs: bool = False
    multi_images: tuple[str, ...] = ()
    shared_z: bool = True
    synflow_rounds: int = 100

    def __post_init__(self) -> None:
        check_choice("method", self.method, METHODS)
        check_choice("imp_target", self.imp_target, IMP_TARGETS)
        if not isinstance(self.rewind, (int, float)) or not 0.0 <= self.rewind < 1.0:
            raise ConfigError("rewind", f"must be a fraction of the dense run in [0, 1), got {self.rewind!r}")
        if not isinstance(self.prune_fraction, float) or not 0.0 < self.prune_fraction < 1.0:
            raise ConfigError("prune_fraction", f"must be in (0, 1), got {self.prune_fraction!r}")
        if self.keep_input_convs and self.run.model.kind != "dip":
            raise ConfigError("keep_input_convs", "only applies to the DIP (its two level-0 input convs)")
        if isinstance(self.synflow_rounds, bool) or not isinstance(self.synflow_rounds, int) or self.synflow_rounds < 1:
            raise ConfigError("synflow_rounds", f"must be a positive integer, got {self.synflow_rounds!r}")

    def dense_payload(self) -> dict:
        fit = asdict(self.run.fit)
        fit.pop("curve_every")
        return {"problem": asdict(self.run.problem), "model": asdict(self.run.model), "fit": fit,
                "seed": self.run.seed, "imp_target": self.imp_target, "multi_images": list(self.multi_images),
                "shared_z": self.shared_z}

    @property
    def dense_key(self) -> str:
        return content_key(self.dense_payload())

    def chain_payload(self) -> dict:
        payload = {"dense": self.dense_key, "method": self.method, "rewind": float(self.rewind),
                   "prune_fraction": self.prune_fraction, "keep_input_convs": self.keep_input_convs}
        if self.method == "synflow":
            payload["synflow_rounds"] = self.synflow_rounds
        return payload

    @property
    def chain_key(self) -> str:
        return content_key(self.chain_payload())

    @property
    def rewind_iter(self) -> int:
        return round(self.rewind * self.run.fit.iters)

    @property
    def frozen(self) -> tuple[str, ...]:
        return INPUT_CONVS if self.keep_input_convs else ()


@dataclass
class ChainResult:
    records: list[dict]
    stop_fired_at: int | None
    stop_chosen: int | None
    fits: int


@dataclass
class _Context:
    """The degraded images, theta_0 and z of a chain: all fixed by its dense config."""

    problems: list[Problem]
    targets: list[Problem]  # what IMP fits: the observations, or A(clean) for imp_target "clean"
    inputs: list[torch.Tensor]
    theta0: dict[str, torch.Tensor]
    cfg: ChainConfig

    def model(self, state: dict[str, torch.Tensor]) -> torch.nn.Module:
        net = build_model(self.cfg.run.model, self.cfg.run.seed)
        net.load_state_dict(state)
        return net.to(self.inputs[0].device)


def _mean(values: list[float]) -> float:
    return float(np.mean(values))


class Tickets:
    """Finds, stores and evaluates tickets; ``fits`` counts the fits actually run (loads cost none)."""

    def __init__(self, store: TrunkStore):
        self.store = store
        self.fits = 0
        self._contexts: dict[str, _Context] = {}

    # -- setup ----------------------------------------------------------------------------------------
    def context(self, cfg: ChainConfig) -> _Context:
        """Images, observations, theta_0 and z for ``cfg``'s dense key (built once per instance)."""
        key = cfg.dense_key
        if key in self._contexts:
            return replace(self._contexts[key], cfg=cfg)
        images = [cfg.run.problem.image, *cfg.multi_images]
        preps = [prepare(replace(cfg.run, problem=replace(cfg.run.problem, image=img))) for img in images]
        shapes = {tuple(p.problem.clean.shape) for p in preps}
        if len(shapes) > 1:
            raise ConfigError("multi_images", f"all images must have one size after resize and crop, got "
                                              f"{sorted(s[2:] for s in shapes)}; set size")
        problems = [p.problem for p in preps]
        if cfg.shared_z or len(preps) == 1:
            inputs = [preps[0].z]
        else:
            h, w = problems[0].clean.shape[2:]
            inputs = [preps[0].z] + [make_input(cfg.run.model, h, w, stable_seed("input", cfg.run.seed, i)).to(
                preps[0].z.device) for i in range(1, len(preps))]
        targets = problems if cfg.imp_target == "observation" else [
            replace(p, observation=p.operator(p.clean)) for p in problems]
        theta0 = {k: v.detach().clone() for k, v in preps[0].model.state_dict().items()}
        self._contexts[key] = _Context(problems, targets, inputs, theta0, cfg)
        return self._contexts[key]

    def _fit(self, ctx: _Context, state: dict[str, torch.Tensor], mask: MaskSet | None, *,
             targets: list[Problem] | None = None, snapshot_at: tuple[int, ...] = (),
             iters: int | None = None) -> tuple[list[FitResult], torch.nn.Module]:
        """Every fit goes through here: counted, and logged to the store's ``fits.log`` audit trail."""
        model = ctx.model(state)
        fcfg = ctx.cfg.run.fit if iters is None else replace(ctx.cfg.run.fit, iters=iters)
        results = fit_many(model, ctx.inputs, targets or ctx.targets, fcfg, seed=ctx.cfg.run.seed,
                           mask=mask.masks if mask is not None else None, snapshot_at=snapshot_at)
        self.fits += 1
        start = "theta0" if state is ctx.theta0 else f"rewind_{ctx.cfg.rewind_iter}"
        self.store.log_fit({"dense": ctx.cfg.dense_key, "mask": mask.hash if mask is not None else "dense",
                            "start": start, "iters": fcfg.iters, "target": "imp" if targets is None else "observation",
                            "seconds": round(results[0].seconds, 3)})
        return results, model

    def _evaluate_fit(self, ctx: _Context, state: dict, mask: MaskSet | None, imp: list[FitResult]) -> list[FitResult]:
        """The reported fit: the IMP fit itself, or (imp_target clean) a second fit on the observations."""
        if ctx.cfg.imp_target == "observation":
            return imp
        return self._fit(ctx, state, mask, targets=ctx.problems)[0]

    # -- records --------------------------------------------------------------------------------------
    def _record(self, level: int, cfg: ChainConfig, mask: MaskSet, imp: list[FitResult],
                shown: list[FitResult]) -> dict:
        rec = {"level": level, "method": cfg.method if level else "dense", "rewind": cfg.rewind,
               "rewind_iter": cfg.rewind_iter if level else 0, "density": mask.density, "sparsity": mask.sparsity,
               "kept": mask.kept, "total": mask.total, "mask_hash": mask.hash,
               "layer_densities": mask.layer_densities(), "imp_loss": imp[0].metrics["loss_final"],
               "seconds": sum(r.seconds for r in {id(r): r for r in imp + shown}.values())}
        for key in METRIC_KEYS:
            if key in shown[0].metrics:
                rec[key] = _mean([r.metrics[key] for r in shown])
        if len(shown) > 1:
            images = [cfg.run.problem.image, *cfg.multi_images]
            rec["per_image"] = [{"image": img, **{k: r.metrics[k] for k in METRIC_KEYS if k in r.metrics}}
                                for img, r in zip(images, shown)]
        return rec

    def _once(self, directory, lock: str, compute: Callable[[], dict]) -> dict:
        """The record in ``directory``, computed at most once across processes: check, lock, check again."""
        rec = self.store.read_json(directory / "level.json")
        if rec is not None:
            return rec
        with self.store.lock(lock):
            return self.store.read_json(directory / "level.json") or compute()

    def _write_level(self, directory, rec: dict, shown: list[FitResult]) -> None:
        """Images (shown, final iterate, oracle peak), the PSNR curve, then the record that marks it done."""
        self.store.write_image(directory / "restored.png", shown[0].restored)
        self.store.write_image(directory / "final.png", shown[0].final)
        self.store.write_image(directory / "peak.png", shown[0].best)
        self.store.write_json(directory / "curve.json", [r.curve for r in shown])
        rec["where"] = directory.relative_to(self.store.root).as_posix()
        self.store.write_json(directory / "level.json", rec)

    # -- level 0 --------------------------------------------------------------------------------------
    def dense(self, cfg: ChainConfig) -> dict:
        """Level 0, shared by every chain with this dense key: theta_0, rewind states, final weights."""
        d = self.store.dense_dir(cfg.dense_key)
        return self._once(d, f"dense-{cfg.dense_key}", lambda: self._dense(cfg, d))

    def _dense(self, cfg: ChainConfig, d) -> dict:
        ctx = self.context(cfg)
        self.store.write_json(d / "config.json", cfg.dense_payload())
        self.store.write_state(d / "theta0.pt", ctx.theta0)
        rewinds = {round(f * cfg.run.fit.iters) for f in (*STANDARD_REWINDS, cfg.rewind)} - {0}
        imp, model = self._fit(ctx, ctx.theta0, None, snapshot_at=tuple(sorted(rewinds)))
        for it, state in imp[0].extra["snapshots"].items():
            self.store.write_state(d / f"rewind_{it}.pt", state)
        self.store.write_state(d / "final.pt", model.state_dict())
        shown = self._evaluate_fit(ctx, ctx.theta0, None, imp)
        rec = self._record(0, cfg, MaskSet.dense(model), imp, shown)
        self._write_level(d, rec, shown)
        return rec

    def rewind_state(self, cfg: ChainConfig, ctx: _Context) -> dict[str, torch.Tensor]:
        """theta_j: saved by the dense run, or replayed (the dense fit is deterministic) for a new j."""
        j = cfg.rewind_iter
        if j == 0:
            return ctx.theta0
        path = self.store.dense_dir(cfg.dense_key) / f"rewind_{j}.pt"
        state = self.store.read_state(path)
        if state is not None:
            return state
        with self.store.lock(f"dense-{cfg.dense_key}-rewind-{j}"):
            state = self.store.read_state(path)
            if state is None:
                imp, _ = self._fit(ctx, ctx.theta0, None, snapshot_at=(j,), iters=j)
                state = imp[0].extra["snapshots"][j]
                self.store.write_state(path, state)
        return state

    # -- masks ----------------------------------------------------------------------------------------
    def keep_count(self, cfg: ChainConfig, dense: MaskSet, level: int) -> int:
        return level_counts(prunable_total(dense, cfg.frozen), level, cfg.prune_fraction)[level]

    def mask(self, cfg: ChainConfig, level: int) -> MaskSet:
        """The mask of ``level``: from the store, or made (and stored) by the chain's method."""
        directory = self.store.level_dir(cfg.chain_key, level)
        found = self.store.read_mask(directory)
        if found is not None:
            return found
        ctx = self.context(cfg)
        dense = MaskSet.dense(ctx.model(ctx.theta0))
        if level == 0:
            return dense.with_meta(method="dense", level=0)
        meta = {"method": cfg.method, "level": level, "image": cfg.run.problem.image, "task": cfg.run.problem.task,
                "seed": cfg.run.seed, "chain": cfg.chain_key, "multi_images": list(cfg.multi_images)}
        keep = self.keep_count(cfg, dense, level)
        seed = stable_seed(cfg.method, cfg.run.seed, level)
        if cfg.method == "imp":
            if level > 1:
                self.chain(cfg, level - 1)  # writes this level's mask when level - 1 finishes
                found = self.store.read_mask(directory)
                if found is None:
                    raise RuntimeError(f"chain {cfg.chain_key}: level {level - 1} finished without its successor mask")
                return found
            self.dense(cfg)
            final = self.store.read_state(self.store.dense_dir(cfg.dense_key) / "final.pt")
            masks = magnitude_step(ctx.model(final), dense, cfg.prune_fraction, cfg.frozen)
            meta["parent"] = dense.hash
        elif cfg.method == "random":
            masks = random_uniform(dense, keep, seed, cfg.frozen)
        elif cfg.method == "random_profile":
            profile = self.mask(replace(cfg, method="imp"), level)
            masks = random_profile(profile, seed)
            meta["profile"] = profile.hash
        elif cfg.method == "snip":
            model = ctx.model(ctx.theta0)
            scores = {}
            for i, p in enumerate(ctx.problems):
                for n, s in snip_scores(model, ctx.inputs[0 if len(ctx.inputs) == 1 else i], p).items():
                    scores[n] = scores.get(n, 0) + s
            masks = keep_top(scores, dense, keep, cfg.frozen)
        else:
            masks = synflow(ctx.model(ctx.theta0), tuple(ctx.inputs[0].shape), dense, keep, cfg.synflow_rounds,
                            cfg.frozen)
        mask = MaskSet(masks, meta)
        self.store.write_mask(directory, mask)
        return mask

    # -- chains ---------------------------------------------------------------------------------------
    def level(self, cfg: ChainConfig, level: int) -> dict:
        """One level's record, fitted only if the store lacks it."""
        if level == 0:
            return self.dense(cfg)
        directory = self.store.level_dir(cfg.chain_key, level)
        return self._once(directory, f"chain-{cfg.chain_key}-{level}", lambda: self._level(cfg, level, directory))

    def _level(self, cfg: ChainConfig, level: int, directory) -> dict:
        mask = self.mask(cfg, level)
        ctx = self.context(cfg)
        state = self.rewind_state(cfg, ctx)
        imp, model = self._fit(ctx, state, mask)
        if cfg.method == "imp":  # the successor's mask needs these weights; store it before the record
            nxt = magnitude_step(model, mask, cfg.prune_fraction, cfg.frozen)
            meta = {**mask.meta, "level": level + 1, "parent": mask.hash}
            self.store.write_mask(self.store.level_dir(cfg.chain_key, level + 1), MaskSet(nxt, meta))
        shown = self._evaluate_fit(ctx, state, mask, imp)
        rec = self._record(level, cfg, mask, imp, shown)
        self._write_level(directory, rec, shown)
        return rec

    def iter_levels(self, cfg: ChainConfig, levels: int, stop: StopRule | None = None,
                    keep_going: bool = False) -> Iterator[tuple[dict, int | None, int | None]]:
        """Yield (record, stop fired at, stop chose) for levels 0..``levels`` as each is loaded or fitted.
        With ``stop``, halts when the rule fires unless ``keep_going``."""
        if isinstance(levels, bool) or not isinstance(levels, int) or levels < 0:
            raise ConfigError("levels", f"must be an integer >= 0, got {levels!r}")
        self.store.write_json(self.store.chain_dir(cfg.chain_key) / "config.json", cfg.chain_payload())
        losses: list[float] = []
        fired = chosen = None
        for level in range(levels + 1):
            rec = self.level(cfg, level)
            losses.append(rec["imp_loss"])
            if stop is not None and fired is None:
                fired, chosen = stop.fired_at(losses), stop.chosen(losses)
            yield rec, fired, chosen
            if fired is not None and not keep_going:
                return

    def chain(self, cfg: ChainConfig, levels: int, stop: StopRule | None = None, keep_going: bool = False,
              on_level: Callable[[dict], None] | None = None) -> ChainResult:
        """Levels 0..``levels``, loading what exists; the result says where the stop rule fired and chose."""
        fits_before = self.fits
        records: list[dict] = []
        fired = chosen = None
        for rec, fired, chosen in self.iter_levels(cfg, levels, stop, keep_going):
            records.append(rec)
            if on_level is not None:
                on_level(rec)
        return ChainResult(records, fired, chosen, self.fits - fits_before)

    # -- transfer -------------------------------------------------------------------------------------
    def evaluate(self, mask: MaskSet, target: ChainConfig) -> dict:
        """Fit ``target``'s image/task from its theta_rewind under a given mask (found elsewhere)."""
        key = content_key({"mask": mask.hash, "dense": target.dense_key, "rewind": float(target.rewind)})
        directory = self.store.eval_dir(key)
        return self._once(directory, f"eval-{key}", lambda: self._evaluate(mask, target, directory))

    def _evaluate(self, mask: MaskSet, target: ChainConfig, directory) -> dict:
        ctx = self.context(target)
        mask.check_fits(ctx.model(ctx.theta0))
        state = self.rewind_state(target, ctx)
        imp, _ = self._fit(ctx, state, mask)
        shown = self._evaluate_fit(ctx, state, mask, imp)
        rec = self._record(int(mask.meta.get("level", 0)), target, mask, imp, shown)
        rec.update(method=mask.meta.get("method", "given"), source=dict(mask.meta))
        self.store.write_json(directory / "config.json", {"mask": mask.hash, "target": target.dense_payload(),
                                                          "rewind": target.rewind})
        self._write_level(directory, rec, shown)
        return rec
