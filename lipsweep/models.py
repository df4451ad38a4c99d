"""The priors: the DIP skip hourglass and the deep decoder (SPEC.md section 1).

Module names are chosen so a mask key says where a conv sits in the hourglass
(``levels.2.down1.conv``, ``levels.0.skip.conv``, ``head``), which the layer-wise analysis reads.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .errors import ConfigError, check_choice

MODEL_KINDS = ("dip", "deep_decoder")
DEFAULT_WIDTH = {"dip": 128, "deep_decoder": 128}


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
        check_choice("model", self.kind, MODEL_KINDS)
        for name in ("width", "levels", "input_depth", "out_channels"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ConfigError(name, f"must be a positive integer, got {value!r}")
        if isinstance(self.skip, bool) or not isinstance(self.skip, int) or self.skip < 0:
            raise ConfigError("skip", f"must be an integer >= 0, got {self.skip!r}")
        if self.kind == "deep_decoder" and self.levels != 5:
            raise ConfigError("levels", "the deep decoder has 5 upsamplings (6 hidden layers); levels must be 5")

    @property
    def granularity(self) -> int:
        """Image sides must be multiples of this (each level halves the resolution)."""
        return 2**self.levels

    def as_dict(self) -> dict:
        return asdict(self)


class ConvBlock(nn.Sequential):
    """Reflection-padded conv, BatchNorm, LeakyReLU(0.2): DIP's conv + bn + act."""

    def __init__(self, c_in: int, c_out: int, k: int, stride: int = 1):
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, k, stride=stride, padding=(k - 1) // 2, padding_mode="reflect")
        self.bn = nn.BatchNorm2d(c_out)
        self.act = nn.LeakyReLU(0.2, inplace=True)


class SkipLevel(nn.Module):
    """One hourglass level: skip branch, two down convs, (deeper levels), merge BN, two up convs."""

    def __init__(self, d_in: int, down: int, up: int, skip: int, k_deeper: int):
        super().__init__()
        self.skip = ConvBlock(d_in, skip, 1) if skip else None
        self.down1 = ConvBlock(d_in, down, 3, stride=2)
        self.down2 = ConvBlock(down, down, 3)
        self.merge_bn = nn.BatchNorm2d(skip + k_deeper)
        self.up1 = ConvBlock(skip + k_deeper, up, 3)
        self.up2 = ConvBlock(up, up, 1)


def _center_crop_to(a: torch.Tensor, h: int, w: int) -> torch.Tensor:
    dh, dw = (a.shape[2] - h) // 2, (a.shape[3] - w) // 2
    return a[:, :, dh:dh + h, dw:dw + w]


class SkipNet(nn.Module):
    """DIP "skip" hourglass; the default (width 128, 5 levels, skip 4, input 32) has 2,217,831 parameters."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        w, n = cfg.width, cfg.levels
        self.levels = nn.ModuleList(
            SkipLevel(cfg.input_depth if i == 0 else w, w, w, cfg.skip, w) for i in range(n)
        )
        self.head = nn.Conv2d(w, cfg.out_channels, 1)

    def _level(self, x: torch.Tensor, i: int) -> torch.Tensor:
        lvl = self.levels[i]
        deeper = lvl.down2(lvl.down1(x))
        if i + 1 < len(self.levels):
            deeper = self._level(deeper, i + 1)
        deeper = F.interpolate(deeper, scale_factor=2, mode="bilinear", align_corners=False)
        if lvl.skip is not None:
            skip = lvl.skip(x)
            h, w = min(skip.shape[2], deeper.shape[2]), min(skip.shape[3], deeper.shape[3])
            deeper = torch.cat([_center_crop_to(skip, h, w), _center_crop_to(deeper, h, w)], dim=1)
        return lvl.up2(lvl.up1(lvl.merge_bn(deeper)))

    def logits(self, z: torch.Tensor) -> torch.Tensor:
        """Output before the sigmoid (SynFlow scores the linear path, which a saturated sigmoid would hide)."""
        return self.head(self._level(z, 0))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.logits(z))


class DeepDecoder(nn.Module):
    """Heckel & Hand's deep decoder: 6 x (1x1 conv, upsample x2 except last, ReLU, BN), 1x1 conv, sigmoid."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        k = cfg.width
        self.hidden = nn.ModuleList(nn.Conv2d(k, k, 1, bias=False) for _ in range(cfg.levels + 1))
        self.bns = nn.ModuleList(nn.BatchNorm2d(k) for _ in range(cfg.levels + 1))
        self.head = nn.Conv2d(k, cfg.out_channels, 1, bias=False)

    def logits(self, z: torch.Tensor) -> torch.Tensor:
        x = z
        last = len(self.hidden) - 1
        for i, (conv, bn) in enumerate(zip(self.hidden, self.bns)):
            x = conv(x)
            if i < last:
                x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
            x = bn(F.relu(x))
        return self.head(x)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.logits(z))


MODELS: dict[str, type[nn.Module]] = {"dip": SkipNet, "deep_decoder": DeepDecoder}


def build_model(cfg: ModelConfig, seed: int) -> nn.Module:
    """theta_0 for ``seed``: PyTorch default init under a private RNG, leaving global RNG state alone."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return MODELS[cfg.kind](cfg)


def input_shape(cfg: ModelConfig, h: int, w: int) -> tuple[int, int, int, int]:
    """Shape of the fixed input z: full resolution for the DIP, H/32 x W/32 with k channels for the DD."""
    if cfg.kind == "deep_decoder":
        return (1, cfg.width, h // cfg.granularity, w // cfg.granularity)
    return (1, cfg.input_depth, h, w)


def make_input(cfg: ModelConfig, h: int, w: int, seed: int) -> torch.Tensor:
    """z ~ U[0, 1) * 0.1, fixed per (seed, image size) (DIP's ``get_noise`` with var 1/10)."""
    g = torch.Generator().manual_seed(seed)
    return torch.rand(input_shape(cfg, h, w), generator=g) * 0.1


def conv_weights(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every Conv2d weight by module name: what masks cover (biases and BN are never pruned)."""
    return {name: m.weight for name, m in model.named_modules() if isinstance(m, nn.Conv2d)}


def counts(model: nn.Module) -> dict[str, int]:
    weights = conv_weights(model)
    return {
        "params": sum(p.numel() for p in model.parameters()),
        "conv_layers": len(weights),
        "conv_weights": sum(w.numel() for w in weights.values()),
        "nonzero_params": sum(int(torch.count_nonzero(p)) for p in model.parameters()),
    }
