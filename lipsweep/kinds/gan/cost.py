"""What a GAN trial costs before it runs (``lipsweep show``): the latent fits and fine-tunings the store
lacks, in FLOPs of the generator's forward pass, priced per CPU core (measured) and per GPU (assumed)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from lipsweep.kinds.gan.config import GanEval, GanTrial, tuned_path
from lipsweep.kinds.gan.generators import image_files

# One core, measured with faces32 (0.047 GFLOP per sample): latent steps of cs/MOM and inpainting at 2
# restarts took 14-16 and 5.8-6.3 ms, i.e. 0.021-0.025 s per GFLOP; a fine-tuning step (batch 16) 0.23 s.
# A GPU's rate on a 256 px generator is far from DIP's "40 cores" (plan.GPU_SPEEDUP): GAN trials price
# their GPU time from FLOPs at GPU_GFLOPS instead.
GAN_SECONDS_PER_GFLOP = 0.023
STEP_OVERHEAD_S = 0.0005


GPU_GFLOPS = 20_000.0  # an assumed sustained fp32 rate of one GPU on these convs (printed as an assumption)
GPU_STEP_OVERHEAD_S = 0.002


@dataclass
class Cost:
    """Fits a trial still needs, their GFLOPs and steps: CPU and GPU seconds follow from them."""

    fits: int = 0
    gflops: float = 0.0
    steps: int = 0

    def add(self, steps: int, gflops_per_step: float) -> None:
        self.fits, self.steps, self.gflops = self.fits + 1, self.steps + steps, self.gflops + steps * gflops_per_step

    def seconds(self) -> tuple[float, float]:
        return (self.steps * STEP_OVERHEAD_S + self.gflops * GAN_SECONDS_PER_GFLOP,
                self.steps * GPU_STEP_OVERHEAD_S + self.gflops / GPU_GFLOPS)


def _tunings(ev: GanEval, gflop: float) -> tuple[int, float]:
    """Steps of one level's fine-tuning and GFLOPs per step. The zoo recipe (``pretrained``): batches of 16,
    a D and a G step, ~12 generator-sized passes per sample. The reference recipe (``finetuned``): a D step
    on ``reference_batch`` samples (~12 passes each, the gradient penalty included) and a G step on one (~6)."""
    from lipsweep.kinds.gan.train import reference_batch, tuning_subset

    ticket = ev.ticket
    n_train = len(image_files(ticket.data)) if ticket.data else max(1, ticket.generator.train_images)
    if not ticket.finetuned:
        return ticket.epochs * math.ceil(ticket.fraction * n_train / 16), 12 * 16 * gflop
    n = tuning_subset(n_train, ticket.fraction)
    batch = reference_batch(n)
    return ticket.epochs * math.ceil(n / batch), (12 * batch + 6) * gflop


def _tune_id(ev: GanEval, store, level: int) -> tuple[str, bool]:
    """The fine-tuning under level ``level``'s mask (``finetuned``): its key where the mask is known (level 0's
    is shared by the methods), else a stand-in unique to the ticket; and whether the store holds it."""
    ticket = ev.ticket
    mask = store.read_mask(store.paths.gan_ticket(ticket.key, level)) if level else None
    if level and mask is None:
        return f"{ticket.key}/tune/{level}", False
    key = ticket.tune_key(level, mask.hash if mask is not None else ticket.generator.dense_hash)
    return key, tuned_path(store, key).is_file()


def estimate(trial: GanTrial, store, counted: set) -> tuple[int, float, float]:
    """Fits the store lacks for this trial, their CPU and GPU seconds: each level's latent fit (restarts, x 2
    latents for MOM, in one batch; fwd + bwd ~ 3 passes) and each fine-tuning: once per ticket level for IMP's
    ranking, and under ``finetuned`` once per level for every method (random too), the dense one shared. Work
    shared with an earlier trial of the sweep (``counted``) or already in the store costs nothing."""
    ev = trial.eval
    info, cost = ev.ticket.generator, Cost()
    gflop = info.flops / 1e9
    tune_steps, tune_gflops = _tunings(ev, gflop)
    for level in range(trial.levels + 1):
        mask = store.read_mask(store.paths.gan_ticket(ev.ticket.key, level)) if level else None
        weights = None
        if ev.ticket.finetuned:
            weights, stored = _tune_id(ev, store, max(level - 1, 0))
            if not stored and weights not in counted:
                counted.add(weights)
                cost.add(tune_steps, tune_gflops)
        elif ev.ticket.tunes and level and mask is None and (ev.ticket.key, level) not in counted:
            counted.add((ev.ticket.key, level))
            cost.add(tune_steps, tune_gflops)
        mask_hash = info.dense_hash if level == 0 else mask.hash if mask is not None else f"{ev.ticket.key}/{level}"
        key = ev.key(mask_hash, weights)
        if key not in counted and not store.has_record(store.paths.gan_eval(key)):
            counted.add(key)
            cost.add(ev.fit.iters, 3 * ev.fit.restarts * (2 if ev.fit.objective == "mom" else 1) * gflop)
    return (cost.fits, *cost.seconds())


def cost_model() -> tuple[str, dict]:
    """What ``show`` prints beside the GAN hours: both come from the generator's FLOPs, at two rates (the GPU
    figure is not the CPU figure over DIP's assumed speed-up)."""
    return (f"the generator's FLOPs at {GAN_SECONDS_PER_GFLOP} s per GFLOP on one core, measured with faces32",
            {"measured": False, "note": f"the generator's FLOPs at {GPU_GFLOPS / 1000:g} TFLOP/s sustained, assumed, "
                                        "not measured; not the CPU figure scaled"})
