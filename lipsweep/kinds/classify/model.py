"""The DIP hourglass as an image classifier (paper Fig. 6), and its training under a fixed mask.

The paper: "we replace the last convolutional layer of DIP models with the linear layer and load the same
initial weights". ``DipClassifier`` takes the very modules of ``build_model(cfg, seed)`` (theta_0 of the
denoising DIP of that width, depth and seed): the whole hourglass up to its output, with the final 1x1 conv
``head`` replaced by global average pooling and a linear layer (width -> classes, its own seeded init).

The DIP's input is a 32-channel code; an image has 3. The image is zero-padded to the input depth, which is
the same function as a 3-channel first conv holding the first 3 input slices of theta_0, but it keeps every
conv's name *and shape*: a denoising mask fits the classifier 1:1 (minus ``head``), a classification mask
fits the DIP 1:1 (plus a dense ``head``), and both count the same weights. The other input slices see only
zeros: they get no gradient, stay at theta_0, and the classification IMP ranks them by that magnitude like
any other weight (at width 128 they are 1.5% of the conv weights; at width 16, 9.7%).

``ReferenceClassifier`` is the reference code's ``skip_classifier`` (``classify_recipe: reference``,
``LTH_IMP_Classification.py`` l.107-129, ``skip.py`` l.238-242): theta_0's hourglass but fresh 3-channel input
convs, the DIP's 1x1 ``head`` kept, then Flatten -> Linear -> Sigmoid, trained with cross-entropy *on the
sigmoid's outputs* as the reference does (``nn.CrossEntropyLoss`` on the model's output, l.134 and l.166), by
SGD with momentum and weight decay, stepped down 10x at 1/2 and 3/4 of the epochs (l.48-51, l.135-137).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from lipsweep.core.errors import ConfigError
from lipsweep.fitting.fit import apply_mask, check_masked_zero, make_optimizer
from lipsweep.kinds.classify.data import Dataset
from lipsweep.kinds.classify.masks import INPUTS
from lipsweep.priors import ModelConfig, build_model
from lipsweep.priors.dip_net import SkipNet
from lipsweep.problems.tasks import stable_seed

# The version of this module's results (lipsweep.core.versions): raise it in the commit that changes them.
ALGORITHM = 1

EVAL_BATCH = 32  # larger batches are slower on CPU (memory-bound activations)
MOMENTUM, WEIGHT_DECAY, GAMMA = 0.9, 2e-4, 0.1  # the reference recipe's SGD (LTH_IMP_Classification.py l.49-51)


class DipClassifier(nn.Module):
    """theta_0's hourglass (``levels.*``, the DIP's own module names) + mean pool + ``fc`` (Linear)."""

    _level = SkipNet._level  # the hourglass's forward, unchanged: it reads only ``self.levels``

    def __init__(self, dip: SkipNet, n_classes: int, seed: int):
        super().__init__()
        self.levels = dip.levels
        self.input_depth = dip.levels[0].down1.conv.in_channels
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(stable_seed("classifier-head", seed))
            self.fc = nn.Linear(dip.head.in_channels, n_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The hourglass's output (what the DIP's ``head`` would read), averaged over the image."""
        x = F.pad(x, (0, 0, 0, 0, 0, self.input_depth - x.shape[1]))
        return self._level(x, 0).mean(dim=(2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x))


class ReferenceClassifier(nn.Module):
    """theta_0's hourglass with fresh 3-channel input convs, its 1x1 ``head``, Flatten -> ``fc`` -> Sigmoid."""

    _level = SkipNet._level

    def __init__(self, dip: SkipNet, n_classes: int, seed: int, size: int):
        super().__init__()
        self.levels, self.head = dip.levels, dip.head
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(stable_seed("classifier-inputs", seed))  # the reference's fresh init, seeded
            _fresh_inputs(self)
            torch.manual_seed(stable_seed("classifier-head", seed))
            self.fc = nn.Linear(self.head.out_channels * self.side(size) ** 2, n_classes)

    def side(self, size: int, i: int = 0) -> int:
        """The hourglass's output side at ``size`` px: stride-2 convs round up, a skip crops the upsampled path
        to its own side (``_level``; the reference's ``Concat``, common.py l.22-40)."""
        down = (size + 1) // 2
        deeper = self.side(down, i + 1) if i + 1 < len(self.levels) else down
        return min(size, 2 * deeper) if self.levels[i].skip is not None else 2 * deeper

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.fc(self.head(self._level(x, 0)).flatten(1)))


def _fresh_inputs(model: nn.Module) -> None:
    """The input convs rebuilt for 3 channels at PyTorch's default init: the reference loads theta_0 except
    these two (LTH_IMP_Classification.py l.126-127)."""
    modules = dict(model.named_modules())
    for name in INPUTS:
        if name in modules:  # a DIP without skips has no skip conv
            block, old = modules[name.rsplit(".", 1)[0]], modules[name]
            block.conv = nn.Conv2d(3, old.out_channels, old.kernel_size, stride=old.stride, padding=old.padding,
                                   padding_mode=old.padding_mode)


def build_classifier(model: ModelConfig, n_classes: int, seed: int, recipe: str = "lth",
                     size: int | None = None) -> nn.Module:
    """The classifier at theta_0 of the DIP ``build_model(model, seed)``; ``reference`` needs the image ``size``
    (its linear layer reads every output pixel)."""
    if model.kind != "dip":
        raise ConfigError("model", f"the classifier is built from the DIP hourglass; allowed: dip, got {model.kind!r}")
    if recipe == "reference":
        return ReferenceClassifier(build_model(model, seed), n_classes, seed, size)
    if model.input_depth < 3:
        raise ConfigError("model", f"the DIP's input depth {model.input_depth} cannot hold an RGB image; allowed: >= 3")
    return DipClassifier(build_model(model, seed), n_classes, seed)


def milestones(epochs: int) -> list[int]:
    """The reference's MultiStep epochs 91 and 136 of 182, as 1/2 and 3/4 of ``epochs`` (at least epoch 1)."""
    return [max(1, epochs // 2), max(1, 3 * epochs // 4)]


def optimizer_for(recipe: str, params: list[nn.Parameter], lr: float,
                  epochs: int) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler | None]:
    """``lth``: Adam, no schedule. ``reference``: SGD (momentum 0.9, weight decay 2e-4) with a 10x step down at
    each milestone, stepped once per epoch; a fresh one every level (LTH_IMP_Classification.py l.212-216)."""
    if recipe != "reference":
        return make_optimizer(params, lr), None
    opt = torch.optim.SGD(params, lr, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY)
    return opt, torch.optim.lr_scheduler.MultiStepLR(opt, milestones(epochs), gamma=GAMMA)


@dataclass
class Trained:
    """What one training run gives: test/train metrics, a per-epoch curve, the final weights."""

    metrics: dict[str, float]
    curve: list[dict[str, float]]
    state: dict[str, torch.Tensor]
    seconds: float


@torch.no_grad()
def score(model: nn.Module, data: Dataset, x: torch.Tensor, y: torch.Tensor, device: torch.device) -> tuple[float, float]:
    """(accuracy, mean cross-entropy) with BatchNorm in eval mode (its running statistics)."""
    model.eval()
    correct, loss = 0, 0.0
    for i in range(0, len(x), EVAL_BATCH):
        logits = model(data.inputs(x[i:i + EVAL_BATCH]).to(device))
        target = y[i:i + EVAL_BATCH].to(device)
        correct += int((logits.argmax(dim=1) == target).sum())
        loss += float(F.cross_entropy(logits, target, reduction="sum"))
    n = max(1, len(x))
    return correct / n, loss / n


@torch.no_grad()
def recalibrate(model: nn.Module, data: Dataset, batch_size: int, device: torch.device) -> None:
    """BatchNorm's running statistics recomputed as plain averages over the training split at the final
    weights: at CPU scale (tens of steps) the momentum averages still lag the weights, and eval mode would
    score that lag, not the subnetwork. Weights are untouched."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the batches below
    model.train()
    for i in range(0, len(data.train_x), batch_size):
        model(data.inputs(data.train_x[i:i + batch_size]).to(device))
    for m, momentum in zip(norms, momenta):
        m.momentum = momentum


def _mask_grads(model: nn.Module, pairs: list) -> bool:
    """Pruned weights' gradients to zero; non-finite gradients to zero first (returns whether there were any).

    Global magnitude pruning can empty a whole layer (at CPU scale the first down conv goes first: its theta_0
    scale, from fan-in 32 x 9, is the smallest, and 29 of its 32 input slices never train). The hourglass
    behind it then carries a constant, and BatchNorm on a constant multiplies the gradient by 1/sqrt(eps)
    per layer: float32 overflows along that dead path, whose weights have nothing to learn anyway."""
    nonfinite = False
    for p in model.parameters():
        if p.grad is not None and not bool(torch.isfinite(p.grad).all()):
            nonfinite = True
            torch.nan_to_num_(p.grad, nan=0.0, posinf=0.0, neginf=0.0)
    for w, m in pairs:
        w.grad.mul_(m)
    return nonfinite


def _epoch(model: nn.Module, data: Dataset, opt: torch.optim.Optimizer, pairs: list, batch_size: int,
           gen: torch.Generator, device: torch.device) -> tuple[float, float, int]:
    """One pass over the shuffled training split, BatchNorm in train mode; pruned weights' gradients masked.
    Returns the mean loss, the running accuracy and the steps that had non-finite gradients."""
    model.train()
    order = torch.randperm(len(data.train_x), generator=gen)
    total, correct, dead = 0.0, 0, 0
    for i in range(0, len(order), batch_size):
        idx = order[i:i + batch_size]
        x, y = data.inputs(data.train_x[idx]).to(device), data.train_y[idx].to(device)
        opt.zero_grad(set_to_none=True)
        logits = model(x)
        loss = F.cross_entropy(logits, y)
        loss.backward()
        dead += _mask_grads(model, pairs)
        opt.step()
        total += loss.item() * len(idx)
        correct += int((logits.argmax(dim=1) == y).sum())
    return total / len(order), correct / len(order), dead


def train(model: nn.Module, data: Dataset, mask: Mapping[str, torch.Tensor] | None, *, epochs: int,
          batch_size: int, lr: float, seed: int, device: torch.device, recipe: str = "lth") -> Trained:
    """The recipe's optimizer from the model's current weights (theta_0, or under ``reference`` the last level's
    trained ones) under ``mask``: pruned weights are zeroed and their gradients masked every step, so Adam's
    moments (SGD's momentum and decay) for them stay zero and they stay exactly zero (checked). The batch order
    depends on the seed only: every level of a ticket sees the same order."""
    model.to(device)
    pairs = apply_mask(model, mask) if mask else []
    opt, schedule = optimizer_for(recipe, list(model.parameters()), lr, epochs)
    gen = torch.Generator().manual_seed(stable_seed("classify-batches", seed))
    curve, dead = [], 0
    start = time.perf_counter()
    for epoch in range(1, epochs + 1):
        loss, running, bad = _epoch(model, data, opt, pairs, batch_size, gen, device)
        curve.append({"iter": epoch, "loss": loss, "train_accuracy_running": running})
        dead += bad
        if schedule is not None:
            schedule.step()
    check_masked_zero(pairs)
    recalibrate(model, data, batch_size, device)
    acc, loss_test = score(model, data, data.test_x, data.test_y, device)
    train_acc, train_loss = score(model, data, data.train_x, data.train_y, device)
    seconds = time.perf_counter() - start
    curve[-1].update(accuracy=acc, loss_test=loss_test)
    metrics = {"accuracy": acc, "loss_test": loss_test, "train_accuracy": train_acc, "loss_train": train_loss,
               "loss_final": curve[-1]["loss"], "epochs": epochs, "seconds": seconds, "nonfinite_steps": dead,
               "train_examples": len(data.train_x), "test_examples": len(data.test_x)}
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    return Trained(metrics, curve, state, seconds)
