"""Lottery tickets in a pretrained GAN generator (paper Section 5; Table 1, Fig. 8), as the trial kind ``gan``.

A *ticket* is the generator IMP chain: level L fine-tunes the pretrained generator under level L-1's mask
against its discriminator (paper: 30 epochs on 40% of CelebA-HQ), prunes 20% of the remaining generator
weights globally by magnitude and rewinds to the pretrained weights; ``random`` prunes the same counts at
random, and ``magnitude`` by the pretrained weights' magnitudes without fine-tuning (an ablation). A ticket depends on the generator, the method and the fine-tuning only, so every image, task and
latent setting shares it. An *evaluation* fits latents of the masked pretrained generator to one
degraded image (``latent.fit_latent``). Both go through the trunk store (``gan/tickets``, ``gan/evals``):
no level is fine-tuned or fitted twice, and an evaluation is keyed by its mask's hash, so the dense level
is one fit for both methods.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, replace
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from .errors import ConfigError, check_choice, check_fraction, check_int, check_positive
from .generators import (GENERATORS, GeneratorInfo, clean_pixels, data_key, dense_mask, generator_info, image_files,
                         rgb)
from .images import check_image, content_hash
from .latent import LatentConfig, LatentResult, fit_latent
from .masks import MaskSet
from .paths import config_of
from .priors import PRIORS
from .priors.pggan import GanCheckpoint, load_checkpoint, masked_weights
from .pruning import keep_top, level_counts
from .records import LevelRecord
from .registry import Registry
from .store import SCHEMA, content_key
from .tasks import TASKS, make_cs_problem, make_problem, stable_seed
from .trial import KINDS, TrialConfig, TrialKind
from .versions import code_part

# The version of this module's results (lipsweep.versions): raise it in the commit that changes them.
ALGORITHM = 1

if TYPE_CHECKING:
    from .tickets import Tickets

OBJECTIVES = ("mom", "ls")
DEFAULT_OBJECTIVE = {"cs": "mom"}  # Jalal et al.'s robust objective for CS; plain least squares elsewhere
CS_NOISE = 0.01


def ready(cfg: TrialConfig) -> None:
    """What only running needs (``lipsweep show`` prices a sweep without it): the generator's weights, and
    fine-tuning data for a generator that does not record its own."""
    info = generator_info(cfg.generator)
    if not info.path:
        raise ConfigError("generator", f"{cfg.generator}: {GENERATORS.get(cfg.generator).how}")
    if cfg.data is None and info.data is None and GAN_METHODS.get(cfg.method).tunes:
        raise ConfigError("data", f"the generator {Path(info.path).name} does not record its training data; allowed: "
                                  "a folder of images to fine-tune on (the paper: CelebA-HQ; --set data=DIR)")


# -- tickets: generator IMP and its random baseline ---------------------------------------------------
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

    def payload(self) -> dict:
        out = {"schema": SCHEMA, "kind": "gan_ticket", "generator": self.generator.content_hash,
               "method": self.method, "prune_fraction": self.prune_fraction, "seed": self.seed, **code_part("gan")}
        if GAN_METHODS.get(self.method).tunes:
            out.update(epochs=self.epochs, fraction=self.fraction, data=data_key(self.data, self.generator))
            if self.threads != 1:
                out["threads"] = self.threads
        return out

    @cached_property
    def key(self) -> str:
        """Computed once: a data folder's key hashes every file (asked for at every level)."""
        return content_key(self.payload())


@dataclass(frozen=True)
class Successor:
    """A generator mask method: level L's mask (keeping ``keep`` weights) from level L-1's, and whether it
    fine-tunes (then the fine-tuning settings enter its key)."""

    make: Callable[[Tickets, GanTicket, MaskSet, int, int], tuple[dict[str, torch.Tensor], dict]]
    tunes: bool


GAN_METHODS: Registry[Successor] = Registry("method")


def _imp(tk: Tickets, ticket: GanTicket, prev: MaskSet, keep: int, level: int) -> tuple[dict, dict]:
    """Fine-tune the pretrained G (and D) under ``prev``, then keep the ``keep`` largest |w| of ``prev``'s."""
    from .gan_train import fine_tune

    ckpt = loaded_generator(tk, ticket.generator.path)
    g, d = copy.deepcopy(ckpt.generator), copy.deepcopy(ckpt.discriminator)
    data = tuning_data(tk, ticket)
    losses = fine_tune(g, d, data, epochs=ticket.epochs, fraction=ticket.fraction, mask=dict(prev.masks),
                       seed=stable_seed("gan-tune", ticket.seed, level))
    weights = masked_weights(g)
    masks = keep_top({n: weights[n].detach().abs() for n in prev.masks}, prev, keep)
    return masks, {f"tune_{k}": float(v) for k, v in losses.items()}


def _random(tk: Tickets, ticket: GanTicket, prev: MaskSet, keep: int, level: int) -> tuple[dict, dict]:
    """Uniform random scores over the remaining weights, ranked globally: exactly ``keep`` kept (each layer's
    density equals the global one in expectation), nested like IMP's masks."""
    g = torch.Generator().manual_seed(stable_seed("gan-random", ticket.seed, level))
    scores = {n: torch.rand(m.shape, generator=g) for n, m in prev.masks.items()}
    return keep_top(scores, prev, keep), {}


def _magnitude(tk: Tickets, ticket: GanTicket, prev: MaskSet, keep: int, level: int) -> tuple[dict, dict]:
    """IMP without the fine-tuning: the largest |w| of the pretrained weights (iterating it is one-shot global
    magnitude pruning). The ablation that says what the paper's fine-tuning step adds."""
    weights = masked_weights(loaded_generator(tk, ticket.generator.path).generator)
    return keep_top({n: weights[n].detach().abs() for n in prev.masks}, prev, keep), {}


GAN_METHODS.register("imp", Successor(_imp, tunes=True))
GAN_METHODS.register("random", Successor(_random, tunes=False))
GAN_METHODS.register("magnitude", Successor(_magnitude, tunes=False))


def loaded_generator(tk: Tickets, path: str) -> GanCheckpoint:
    """The checkpoint, loaded once per workspace (a trial reads it for every level)."""
    key = f"generator:{path}"
    if key not in tk.loaded:
        tk.loaded[key] = load_checkpoint(path)
    return tk.loaded[key]


def tuning_data(tk: Tickets, ticket: GanTicket) -> torch.Tensor:
    """The fine-tuning images: a user folder, or the generator's own training split (held-out faces excluded)."""
    from .gan_train import load_faces, split

    info = ticket.generator
    key = f"data:{ticket.data}:{info.content_hash}"
    if key not in tk.loaded:
        faces = load_faces(ticket.data or info.data, info.size, info.channels)
        holdout = info.holdout if ticket.data is None else 0
        tk.loaded[key] = faces[split(len(faces), holdout)[0]]
    return tk.loaded[key]


def ticket_mask(tk: Tickets, ticket: GanTicket, level: int) -> MaskSet:
    """Level ``level``'s generator mask, computed at most once across processes (level 0: dense)."""
    if level == 0:
        return dense_mask(loaded_generator(tk, ticket.generator.path).generator)
    store = tk.store
    d = store.paths.gan_ticket(ticket.key, level)
    found = store.read_mask(d)
    if found is not None:
        return found
    prev = ticket_mask(tk, ticket, level - 1)
    with store.lock(f"gan-ticket-{ticket.key}-{level}"):
        found = store.read_mask(d)
        if found is None:
            found = _new_mask(tk, ticket, prev, level)
            store.write_json(config_of(d.parent), ticket.payload())
            store.write_mask(d, found)
    return found


def _new_mask(tk: Tickets, ticket: GanTicket, prev: MaskSet, level: int) -> MaskSet:
    import time

    from .platforms import computing

    keep = level_counts(prev.total, level, ticket.prune_fraction)[level]
    method = GAN_METHODS.get(ticket.method)
    start = time.perf_counter()
    with computing(ticket.threads) as platform:  # fine-tuning sums depend on the thread count, as its key says
        masks, meta = method.make(tk, ticket, prev, keep, level)
    seconds = time.perf_counter() - start
    if method.tunes:
        tk.fits += 1
        tk.store.log_fit({"dense": f"gan-tune-{ticket.generator.content_hash}", "mask": prev.hash,
                          "start": "pretrained", "iters": ticket.epochs, "target": "fine-tune",
                          "seconds": round(seconds, 3), "platform": platform.as_dict()})
    return MaskSet(masks, {"method": ticket.method, "level": level, "generator": ticket.generator.content_hash,
                           "seed": ticket.seed, "parent": prev.hash, "platform": platform.as_dict(), **meta})


# -- evaluations: latent optimisation of the masked pretrained generator --------------------------------
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

    def payload(self, mask_hash: str) -> dict:
        fit = asdict(self.fit)
        fit.pop("curve_every", None)
        out = {"schema": SCHEMA, "kind": "gan_eval", "generator": self.ticket.generator.content_hash,
               "mask": mask_hash, "image": content_hash(self.image), "task": self.task, "fit": fit,
               "seed": self.seed, **code_part("gan")}
        if self.task == "cs":
            out.update(measurements=self.measurements, outliers=self.outliers, noise=CS_NOISE)
        if self.ticket.threads != 1:
            out["threads"] = self.ticket.threads
        return out


def gan_eval(cfg: TrialConfig) -> GanEval:
    info = generator_info(cfg.generator)
    ticket = GanTicket(info, cfg.method, cfg.prune_fraction, cfg.tune_epochs, cfg.tune_fraction, cfg.data, cfg.seed,
                       cfg.threads)
    objective = cfg.objective or DEFAULT_OBJECTIVE.get(cfg.task, "ls")
    iters = cfg.iters if cfg.iters is not None else TASKS.get(cfg.task).iters
    # reshuffle: a fresh MOM partition per step, as the paper's script (Eval_sparse_PGAN_on_CS.py, mom_obj)
    fit = LatentConfig(iters=iters, lr=cfg.lr, restarts=cfg.restarts, objective=objective, reshuffle=True)
    return GanEval(ticket, cfg.image, cfg.task, cfg.measurements, cfg.outliers, fit, cfg.seed)


def gan_problem(ev: GanEval):
    clean = clean_pixels(ev.image, ev.ticket.generator)
    if ev.task == "cs":
        return make_cs_problem(clean, ev.seed, ev.measurements, ev.outliers, CS_NOISE)
    return make_problem(ev.task, clean, ev.seed)


def evaluate_level(tk: Tickets, ev: GanEval, level: int) -> LevelRecord:
    mask = ticket_mask(tk, ev.ticket, level)
    key = content_key(ev.payload(mask.hash))
    d = tk.store.paths.gan_eval(key)
    rec = tk.once(d, f"gan-eval-{key}", lambda: _evaluate(tk, ev, mask, level, d, key))
    return replace(rec, level=level, method=ev.ticket.method if level else "dense")


def masked_generator(tk: Tickets, ev: GanEval, mask: MaskSet) -> torch.nn.Module:
    """The pretrained generator (rewound) with pruned weights set to exactly zero."""
    g = copy.deepcopy(loaded_generator(tk, ev.ticket.generator.path).generator)
    weights = masked_weights(g)
    with torch.no_grad():
        for name, m in mask.masks.items():
            weights[name].mul_(m.to(weights[name].dtype))
    return g.eval()


def _evaluate(tk: Tickets, ev: GanEval, mask: MaskSet, level: int, d: Path, key: str) -> LevelRecord:
    from .platforms import computing

    problem = gan_problem(ev)
    with computing(ev.ticket.threads) as platform:
        res = fit_latent(masked_generator(tk, ev, mask), problem, ev.ticket.generator.latent, ev.fit, ev.seed)
    tk.fits += 1
    tk.store.log_fit({"dense": f"gan-{ev.ticket.generator.content_hash}", "mask": mask.hash, "start": "pretrained",
                      "iters": ev.fit.iters, "target": "latent", "seconds": round(res.seconds, 3),
                      "platform": platform.as_dict()})
    tk.store.write_json(config_of(d), ev.payload(mask.hash))
    tk.store.write_mask(d, mask.with_meta(**({"level": level} if level else {"method": "dense"})))
    rec = replace(_record(ev, mask, level, res), platform=platform.as_dict())
    return _write(tk, d, rec, res, problem)


def _record(ev: GanEval, mask: MaskSet, level: int, res: LatentResult) -> LevelRecord:
    return LevelRecord(level=level, method=ev.ticket.method if level else "dense", rewind=0.0, rewind_iter=0,
                       density=mask.density, sparsity=mask.sparsity, kept=mask.kept, total=mask.total,
                       mask_hash=mask.hash, layer_densities=mask.layer_densities(),
                       imp_loss=float(res.metrics["loss"]), seconds=res.seconds,
                       metrics={k: float(v) for k, v in res.metrics.items() if _finite(v)})


def _finite(v: object) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _write(tk: Tickets, d: Path, rec: LevelRecord, res: LatentResult, problem) -> LevelRecord:
    """Restored (chosen by the measurement loss), the oracle restart's, the truth and (inpainting) the
    observation: Fig. 8's grid reads them."""
    from .tasks import to_pixels

    images = {"restored": rgb(res.restored), "peak": rgb(res.restored_oracle), "clean": rgb(to_pixels(problem.clean))}
    if problem.observation.dim() == 4:  # an image (inpainting); a CS observation is a vector of m
        images["observation"] = rgb(to_pixels(problem.baseline))
    tk.store.write_level_files(d, images, [res.curve])
    rec = replace(rec, where=tk.store.relative(d))
    tk.store.write_record(d, rec.to_dict())
    return rec


# -- the trial kind ------------------------------------------------------------------------------------
def run_gan(cfg: TrialConfig, tk: Tickets) -> Iterator[LevelRecord]:
    ev = gan_eval(cfg)
    for level in range(cfg.levels + 1):
        yield evaluate_level(tk, ev, level)


def check_gan(cfg: TrialConfig) -> None:
    """Generator, latent, image size, objective and CS sizes, before any trial starts."""
    info = generator_info(cfg.generator)
    GAN_METHODS.get(cfg.method)
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
    for name in ("tune_epochs", "restarts"):
        check_int(name, getattr(cfg, name), 1)
    check_fraction("tune_fraction", cfg.tune_fraction, closed_low=False)
    check_positive("lr", cfg.lr)
    _check_cs(cfg, info)
    if cfg.data is not None:  # every file readable, before any trial starts (headers only, cached)
        for path in image_files(cfg.data):
            check_image(str(path), None, 1, 1, field="data")
    _check_dip_fields(cfg)
    gan_eval(cfg)


def _check_cs(cfg: TrialConfig, info: GeneratorInfo) -> None:
    n = info.size * info.size * info.channels
    check_int("measurements", cfg.measurements, 1)
    check_int("outliers", cfg.outliers, 0)
    if cfg.task == "cs" and cfg.measurements > n:
        raise ConfigError("measurements", f"must be <= the image dimension {n} ({info.size}x{info.size}x"
                                          f"{info.channels}), got {cfg.measurements}")
    if cfg.outliers >= cfg.measurements:
        raise ConfigError("outliers", f"must be < measurements ({cfg.measurements}), got {cfg.outliers}")


DIP_ONLY = ("inpaint_mask", "reg_noise_std", "ema", "backtrack", "multi_images", "source_image", "source_task",
            "source_multi_images", "stop_k", "sparsities", "imp_target", "keep_input_convs", "target", "channels",
            "snapshots", "burnin", "sample_every", "at_levels", "source_iters")


def _check_dip_fields(cfg: TrialConfig) -> None:
    from .trial import CLASSIFY_FIELDS, only_for

    only_for(cfg, "chain", DIP_ONLY)
    only_for(cfg, "classify", CLASSIFY_FIELDS)
    if cfg.rewind != 0.0:
        raise ConfigError("rewind", "kind 'gan' rewinds to the pretrained weights (the paper's loop); allowed: 0")


def _estimate(cfg: TrialConfig, store, counted: set) -> tuple[int, float, float]:
    from .gan_cost import estimate

    return estimate(cfg, store, counted)


KINDS.register("gan", TrialKind(run=run_gan, chains=lambda t: (None, None), check=check_gan, multiple=lambda t: 1,
                                found_key=lambda t: gan_eval(t).ticket.key, estimate=_estimate, ready=ready,
                                contents=lambda t: [generator_info(t.generator).content_hash,
                                                    *([data_key(t.data, generator_info(t.generator))] if t.data else [])],
                                products=("gan",)))
