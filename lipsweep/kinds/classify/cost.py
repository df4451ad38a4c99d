"""What a classification trial costs before it runs (``lipsweep show``): the trainings and DIP fits the store
lacks, in CPU seconds (a model of the hourglass's cost, or the store's own timings) and assumed GPU seconds.

A training's epoch is one forward + backward pass per training image, then (once) BatchNorm recalibration and
scoring: three forward passes over the splits. Work shared with an earlier trial of the sweep (``counted``)
or already in the store costs nothing.
"""

from __future__ import annotations

from lipsweep.kinds.classify import data as classify_data
from lipsweep.kinds.classify.config import ClassifyTrial, Ticket, Training
from lipsweep.kinds.classify.masks import dense_mask, on_classifier, on_dip
from lipsweep.lottery.chain import ChainConfig
from lipsweep.lottery.cost import GPU_SPEEDUP, measured_seconds, seconds_per_iter
from lipsweep.lottery.transfer import eval_key
from lipsweep.pruning.methods import METHODS

# One core, 64 px, lfw_faces, batch 32: 6-11 ms per image fwd+bwd at width 16, 14-27 ms at width 32 (the
# spread is machine load): seconds = pixels * (PIXEL_WIDTH * w + PIXEL_WIDTH2 * w^2) per image and epoch.
PIXEL_WIDTH, PIXEL_WIDTH2 = 9e-8, 1.5e-9
FORWARD_SHARE = 0.35  # a forward pass without gradients, relative to forward + backward (measured 0.25-0.4)
BUILD_S = 0.3  # theta_0, the data already in memory


def training_seconds(training: Training, measured: dict[str, float]) -> float:
    """One training: the store's timing of this training's epochs, or the model."""
    n_train, n_test = classify_data.split_counts(training.data, training.examples)
    if f"classify-{training.key}" in measured:
        return BUILD_S + training.epochs * measured[f"classify-{training.key}"]
    w = training.model.width
    per_image = training.size**2 * (PIXEL_WIDTH * w + PIXEL_WIDTH2 * w * w)
    return BUILD_S + per_image * (training.epochs * n_train + FORWARD_SHARE * (2 * n_train + n_test))


class Tally:
    """Fits still needed and their CPU seconds; each piece of shared work counted once per sweep."""

    def __init__(self, store, counted: set):
        self.store, self.counted, self.measured = store, counted, measured_seconds(store)
        self.fits, self.seconds = 0, 0.0

    def add(self, token: object, done: bool, seconds: float) -> None:
        if token in self.counted or done:
            return
        self.counted.add(token)
        self.fits, self.seconds = self.fits + 1, self.seconds + seconds

    def dip_fit(self, chain: ChainConfig) -> float:
        return chain.run.fit.iters * seconds_per_iter(chain, self.measured) * (2 if chain.imp_target == "clean" else 1)

    def dense(self, chain: ChainConfig) -> None:
        self.add(chain.dense_key, self.store.has_record(self.store.dense_dir(chain.dense_key)), self.dip_fit(chain))

    def chain_level(self, chain: ChainConfig, level: int) -> None:
        done = self.store.has_record(self.store.level_dir(chain.chain_key, level))
        self.add(("chain", chain.chain_key, level), done, self.dip_fit(chain))

    def training(self, training: Training, key: str | None, placeholder: tuple) -> None:
        """One training by its eval key (None: its mask, or the training it starts from, is not made yet)."""
        done = key is not None and self.store.has_record(self.store.paths.classify_eval(key))
        self.add(key or (*placeholder, training.key), done, training_seconds(training, self.measured))


def _ticket_hash(store, ticket: Ticket, level: int) -> str | None:
    found = store.read_mask(store.paths.classify_ticket(ticket.key, level))
    return found.hash if found is not None else None


def _chain_masks(t: Tally, source: ChainConfig, through: int) -> None:
    """The DIP fits a source chain needs for its masks up to level ``through`` (IMP: the levels before; a
    one-shot method none)."""
    if METHODS.get(source.method).sequential:
        t.dense(source)
        for level in range(1, through):
            t.chain_level(source, level)


def _classify(t: Tally, trial: ClassifyTrial) -> None:
    training = trial.training
    key = training.eval_key(dense_mask(training.model, training.recipe).hash)
    t.training(training, key, ())
    ticket, source = trial.ticket, trial.source
    if ticket is not None:
        for level in range(1, trial.levels + 1):  # the reference recipe: each key chains the last level's
            found, start = _ticket_hash(t.store, ticket, level), key if training.continues else None
            key = None if found is None or (training.continues and start is None) else training.eval_key(found, start)
            t.training(training, key, ("ticket", ticket.key, level))
        return
    _chain_masks(t, source, trial.levels)
    for level in range(1, trial.levels + 1):
        found = t.store.read_mask(t.store.level_dir(source.chain_key, level))
        key = None if found is None else training.eval_key(on_classifier(found, training.recipe).hash)
        t.training(training, key, ("chain", source.chain_key, level))


def _transfer(t: Tally, trial: ClassifyTrial) -> None:
    target, source = trial.target, trial.source
    t.dense(target)
    if source is not None:
        if source.chain_key == target.chain_key:  # the chain's own levels
            for level in range(1, trial.levels + 1):
                t.chain_level(source, level)
            return
        _chain_masks(t, source, trial.levels)
        for level in range(1, trial.levels + 1):
            t.add(("eval", source.chain_key, target.dense_key, level), False, t.dip_fit(target))
        return
    ticket = trial.ticket
    _classify(t, trial)  # the ticket's own trainings (shared with its classify trial)
    for level in range(1, trial.levels + 1):
        found = t.store.read_mask(t.store.paths.classify_ticket(ticket.key, level))
        key = None if found is None else eval_key(on_dip(found, target.run.model, trial.training.recipe).hash, target)
        done = key is not None and t.store.has_record(t.store.eval_dir(key))
        t.add(key or ("transfer", ticket.key, target.dense_key, level), done, t.dip_fit(target))


def estimate_classify(trial: ClassifyTrial, store, counted: set) -> tuple[int, float, float]:
    """(fits the store lacks, CPU seconds, GPU seconds assuming ``GPU_SPEEDUP``) for a ``classify`` trial."""
    t = Tally(store, counted)
    _classify(t, trial)
    return t.fits, t.seconds, t.seconds / GPU_SPEEDUP


def estimate_transfer(trial: ClassifyTrial, store, counted: set) -> tuple[int, float, float]:
    """The same for a ``classify_transfer`` trial: its ticket's trainings and the DIP fits of its target."""
    t = Tally(store, counted)
    _transfer(t, trial)
    return t.fits, t.seconds, t.seconds / GPU_SPEEDUP


def cost_model() -> tuple[str, dict]:
    """What ``show`` prints beside the classification hours: trainings from a per-image model of the
    hourglass (or the store's timings), DIP fits from the calibration table; the GPU figure is only scaled."""
    return ("trainings: the hourglass's per-image time on one core (a model fitted at 64 px, or the store's own "
            "timings); DIP fits: the calibration table",
            {"measured": False, "note": f"the CPU figure / {GPU_SPEEDUP:g}, assuming a GPU = {GPU_SPEEDUP:g} CPU "
                                        "threads, not measured"})
