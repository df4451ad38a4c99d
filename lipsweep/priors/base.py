"""What every prior shares: its config, the registry entry that declares it, and the helpers that read a
network's conv weights (what masks cover). Implementations live one per file beside this one, their
networks (torch) in a module of their own that is imported when one is built: checking a config needs no torch.

Module names are chosen so a mask key says where a conv sits (``levels.2.down1.conv``, ``head``), which
the layer-wise analysis reads.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING

from lipsweep.core.errors import check_int
from lipsweep.core.registry import Registry

if TYPE_CHECKING:
    import torch
    from torch import nn

# The version of this module's results (lipsweep.core.versions): raise it in the commit that changes them.
ALGORITHM = 1


@dataclass(frozen=True)
class ModelConfig:
    """Architecture of a prior. ``width`` is the DIP's channels per level or the deep decoder's k."""

    kind: str = "dip"
    width: int = 128
    levels: int = 5
    skip: int = 4
    input_depth: int = 32
    out_channels: int = 3

    def __post_init__(self) -> None:
        prior = PRIORS.get(self.kind)
        for name in ("width", "levels", "input_depth", "out_channels"):
            check_int(name, getattr(self, name), 1)
        check_int("skip", self.skip, 0)
        prior.check(self)

    @property
    def granularity(self) -> int:
        """Image sides must be multiples of this (each level halves the resolution)."""
        return 2**self.levels

    def as_dict(self) -> dict:
        return asdict(self)


def _no_check(cfg: ModelConfig) -> None:
    return None


@dataclass(frozen=True)
class Prior:
    """A registry entry: how to build the network, its input, and the facts other modules ask about it.

    ``params`` is the closed-form parameter count (checked against the built network in the tests);
    ``fit_defaults`` patches the task's fit defaults (e.g. the deep decoder takes no input noise);
    ``input_convs`` are the convs the reference code leaves unpruned (``keep_input_convs``);
    ``cost_width`` is the width a step's cost scales with (``lipsweep show``'s estimate); ``pretrained``
    marks a generator prior whose weights come from a checkpoint (trial kind ``gan``)."""

    build: Callable[[ModelConfig], nn.Module]
    input_shape: Callable[[ModelConfig, int, int], tuple[int, int, int, int]]
    params: Callable[[ModelConfig], int]
    default_width: int = 128
    check: Callable[[ModelConfig], None] = _no_check
    fit_defaults: Callable[[str], Mapping[str, object]] = field(default=lambda task: {})
    input_convs: tuple[str, ...] = ()
    cost_width: Callable[[int], float] = field(default=float)
    pretrained: bool = False  # a generator loaded from a checkpoint (kind 'gan'), not built from a ModelConfig


PRIORS: Registry[Prior] = Registry("model")


def build_model(cfg: ModelConfig, seed: int) -> nn.Module:
    """theta_0 for ``seed``: PyTorch default init under a private RNG, leaving global RNG state alone."""
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return PRIORS.get(cfg.kind).build(cfg)


def input_shape(cfg: ModelConfig, h: int, w: int) -> tuple[int, int, int, int]:
    """Shape of the fixed input z for an h x w image."""
    return PRIORS.get(cfg.kind).input_shape(cfg, h, w)


def make_input(cfg: ModelConfig, h: int, w: int, seed: int) -> torch.Tensor:
    """z ~ U[0, 1) * 0.1, fixed per (seed, image size) (DIP's ``get_noise`` with var 1/10)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    return torch.rand(input_shape(cfg, h, w), generator=g) * 0.1


def conv_weights(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every Conv2d weight by module name: what masks cover (biases and BN are never pruned)."""
    from torch import nn

    return {name: m.weight for name, m in model.named_modules() if isinstance(m, nn.Conv2d)}


def counts(model: nn.Module) -> dict[str, int]:
    import torch

    weights = conv_weights(model)
    return {
        "params": sum(p.numel() for p in model.parameters()),
        "conv_layers": len(weights),
        "conv_weights": sum(w.numel() for w in weights.values()),
        "nonzero_params": sum(int(torch.count_nonzero(p)) for p in model.parameters()),
    }
