"""The PGGAN generator and discriminator of the paper's GAN experiments (Section 5), in the exact module
layout of facebookresearch/pytorch_GAN_zoo (``models/networks/progressive_conv_net.py``), so the zoo's
``netG`` / ``netD`` state dicts load with ``strict=True`` and lipsweep's own generators are zoo checkpoints.

The networks are the zoo's after growing to the final scale with the blending factor alpha at 0: every
scale's layers exist, only the last ``toRGB`` / ``fromRGB`` is used. Weights are stored N(0, 1) and scaled at
runtime by He's constant (equalized learning rate, ``models/networks/custom_layers.py``).
"""

from __future__ import annotations

import hashlib
import io
import json
import math
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from lipsweep.core.errors import ConfigError, allowed, check_int
from lipsweep.priors.base import PRIORS, Prior

# The version of this module's results (lipsweep.core.versions): raise it in the commit that changes them.
ALGORITHM = 1

ZOO_LOSSES = ("WGANGP", "Logistic", "MSE", "DCGAN")  # models/base_GAN.py's lossMode values
TANH_LOSSES = ("MSE", "DCGAN")  # their generationActivation is tanh; WGANGP's and Logistic's the identity
ZOO_FORMAT = "a file with config, netG and netD as pytorch_GAN_zoo saves it"


@dataclass(frozen=True)
class GeneratorSpec:
    """A zoo ``ProgressiveGAN`` config in typed form: the layout (latent, per-scale depths, channels, D's
    mini-batch std dev) plus what changes the forward pass or training (see ``models/progressive_gan.py``
    and ``models/trainer/standard_configurations/pgan_config.py`` for the defaults used here)."""

    latent: int
    depths: tuple[int, ...]
    out_channels: int = 3
    minibatch_std: bool = True
    equalized: bool = True
    normalization: bool = True
    leak: float = 0.2
    loss: str = "WGANGP"
    lambda_gp: float = 10.0
    epsilon_d: float = 0.001
    r1: float = 0.0
    lr: float = 0.001

    def __post_init__(self) -> None:
        object.__setattr__(self, "depths", tuple(self.depths))  # a list from YAML / JSON compares equal
        check_int("latent", self.latent, 1)
        check_int("out_channels", self.out_channels, 1)
        if not self.depths or not all(isinstance(d, int) and not isinstance(d, bool) and d > 0
                                      for d in self.depths):
            raise ConfigError("depths", f"must be positive integers, one per scale, got {self.depths!r}")
        if self.loss not in ZOO_LOSSES:
            raise ConfigError("loss", f"unknown value {self.loss!r}; allowed: {allowed(ZOO_LOSSES)}")

    @property
    def size(self) -> int:
        return 4 * 2 ** (len(self.depths) - 1)

    @classmethod
    def from_config(cls, config: dict) -> GeneratorSpec:
        """From a zoo checkpoint's ``config``; AC-GAN configs (class-conditioned) are not supported."""
        if config.get("categoryVectorDim", 0) or config.get("attribKeysOrder"):
            raise ConfigError("config", "an AC-GAN (categoryVectorDim > 0); allowed: unconditional PGAN")
        if config.get("alpha", 0) != 0:
            raise ConfigError("config", f"saved while blending scales (alpha {config['alpha']}); allowed: 0")
        return cls(latent=int(config["latentVectorDim"]),
                   depths=(int(config["depthScale0"]), *(int(d) for d in config["depthOtherScales"])),
                   out_channels=int(config["dimOutput"]), minibatch_std=bool(config["miniBatchStdDev"]),
                   equalized=bool(config["equalizedlR"]), normalization=bool(config["perChannelNormalization"]),
                   leak=float(config["leakyReluLeak"]), loss=str(config["lossCriterion"]),
                   lambda_gp=float(config.get("lambdaGP", 0.0)), epsilon_d=float(config.get("epsilonD", 0.0)),
                   r1=float(config.get("logisticGradReal", 0.0)), lr=float(config.get("learningRate", 0.001)))

    def to_config(self) -> dict:
        """Every field ``ProgressiveGAN.__init__`` and ``BaseGAN.__init__`` put in ``self.config``, so the
        zoo's own ``load_state_dict`` rebuilds these networks from a lipsweep file."""
        return {"depthScale0": self.depths[0], "initBiasToZero": True, "leakyReluLeak": self.leak,
                "depthOtherScales": list(self.depths[1:]), "perChannelNormalization": self.normalization,
                "alpha": 0, "miniBatchStdDev": self.minibatch_std, "equalizedlR": self.equalized,
                "noiseVectorDim": self.latent, "dimOutput": self.out_channels, "learningRate": self.lr,
                "attribKeysOrder": None, "categoryVectorDim": 0, "weightConditionG": 0.0,
                "weightConditionD": 0.0, "GDPP": False, "latentVectorDim": self.latent,
                "lossCriterion": self.loss, "lambdaGP": self.lambda_gp, "epsilonD": self.epsilon_d,
                "logisticGradReal": self.r1}


def pggan_256_spec() -> GeneratorSpec:
    """The zoo's ``PGAN celebAHQ-256`` (``celebaHQ_s6_i80000``): scale 6 of the default depthScales
    [512, 512, 512, 512, 256, 128, 64, ...], latent 512, RGB, WGAN-GP (lambda 10, epsilon 0.001)."""
    return GeneratorSpec(latent=512, depths=(512, 512, 512, 512, 256, 128, 64))


class Equalized(nn.Module):
    """The zoo's ``ConstrainedLayer``: the wrapped layer is ``.module`` (hence ``*.module.weight`` keys),
    its weight is N(0, 1) and its bias 0, and its output is scaled by sqrt(2 / fan_in) at runtime (Karras
    et al. 2018, equalized learning rate), so Adam sees every layer's weights on the same scale."""

    def __init__(self, module: nn.Conv2d | nn.Linear, equalized: bool = True):
        super().__init__()
        self.module = module
        nn.init.zeros_(module.bias)
        self.scale = 1.0
        if equalized:
            nn.init.normal_(module.weight, 0.0, 1.0)
            self.scale = math.sqrt(2.0 / module.weight[0].numel())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.module(x) * self.scale


def _conv(cin: int, cout: int, k: int, spec: GeneratorSpec) -> Equalized:
    return Equalized(nn.Conv2d(cin, cout, k, padding=k // 2), spec.equalized)


def pixel_norm(x: torch.Tensor) -> torch.Tensor:
    """The zoo's ``NormalizationLayer``: each pixel's feature vector to unit RMS."""
    return x * ((x**2).mean(dim=1, keepdim=True) + 1e-8).rsqrt()


def minibatch_std(x: torch.Tensor, group: int = 4) -> torch.Tensor:
    """The zoo's ``miniBatchStdDev`` (``models/networks/mini_batch_stddev_module.py``): one extra channel,
    the mean std dev of the features over groups of ``group`` samples (the whole batch if it does not divide)."""
    b, c, h, w = x.shape
    group = min(b, group)
    group = b if b % group else group
    if group == 1:
        return torch.cat([x, x.new_zeros(b, 1, h, w)], dim=1)
    y = torch.sqrt(x.view(-1, group, c, h, w).var(1) + 1e-8).view(b // group, -1).mean(1)
    y = y.view(-1, 1, 1, 1, 1).expand(-1, group, 1, h, w).reshape(b, 1, h, w)
    return torch.cat([x, y], dim=1)


class Generator(nn.Module):
    """The zoo's ``GNet`` at its final scale (alpha 0): z -> pixel norm -> linear to 4x4 -> conv per scale,
    nearest x2 upsampling and two convs for each added scale, the last ``toRGB``; no output activation for
    WGAN-GP (images roughly in [-1, 1])."""

    def __init__(self, spec: GeneratorSpec):
        super().__init__()
        self.spec = spec
        d = spec.depths
        # Registration order is GNet's, so state dicts list their keys in the zoo's order.
        self.scaleLayers = nn.ModuleList(
            nn.ModuleList([_conv(d[i - 1], d[i], 3, spec), _conv(d[i], d[i], 3, spec)]) for i in range(1, len(d)))
        self.toRGBLayers = nn.ModuleList(_conv(depth, spec.out_channels, 1, spec) for depth in d)
        self.formatLayer = Equalized(nn.Linear(spec.latent, 16 * d[0]), spec.equalized)
        self.groupScale0 = nn.ModuleList([_conv(d[0], d[0], 3, spec)])

    def _act(self, x: torch.Tensor) -> torch.Tensor:
        x = F.leaky_relu(x, self.spec.leak)
        return pixel_norm(x) if self.spec.normalization else x

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = pixel_norm(z) if self.spec.normalization else z
        x = self._act(self.formatLayer(x.flatten(1)).view(z.shape[0], -1, 4, 4))
        x = self._act(self.groupScale0[0](x))
        for group in self.scaleLayers:
            x = F.interpolate(x, scale_factor=2, mode="nearest")
            for conv in group:
                x = self._act(conv(x))
        x = self.toRGBLayers[-1](x)
        return torch.tanh(x) if self.spec.loss in TANH_LOSSES else x


class Discriminator(nn.Module):
    """The zoo's ``DNet`` at its final scale (alpha 0): the last ``fromRGB``, two convs and 2x2 average
    pooling per added scale (in reverse), mini-batch std dev, a conv and a linear at 4x4, the decision."""

    def __init__(self, spec: GeneratorSpec):
        super().__init__()
        self.spec = spec
        d = spec.depths
        self.scaleLayers = nn.ModuleList(
            nn.ModuleList([_conv(d[i], d[i], 3, spec), _conv(d[i], d[i - 1], 3, spec)]) for i in range(1, len(d)))
        self.fromRGBLayers = nn.ModuleList(_conv(spec.out_channels, depth, 1, spec) for depth in d)
        self.mergeLayers = nn.ModuleList()
        self.decisionLayer = Equalized(nn.Linear(d[0], 1), spec.equalized)
        self.groupScaleZero = nn.ModuleList([_conv(d[0] + int(spec.minibatch_std), d[0], 3, spec),
                                             Equalized(nn.Linear(16 * d[0], d[0]), spec.equalized)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        act = partial(F.leaky_relu, negative_slope=self.spec.leak)
        x = act(self.fromRGBLayers[-1](x))
        for group in reversed(self.scaleLayers):
            for conv in group:
                x = act(conv(x))
            x = F.avg_pool2d(x, 2)
        if self.spec.minibatch_std:
            x = minibatch_std(x)
        x = act(self.groupScaleZero[0](x))
        x = act(self.groupScaleZero[1](x.flatten(1)))
        return self.decisionLayer(x)[:, 0]


def masked_weights(g: Generator) -> dict[str, torch.Tensor]:
    """The weights generator IMP prunes, by module name: the inner ``nn.Conv2d`` of every equalized conv,
    as the paper's code masks them (Section 5); the first linear (``formatLayer``) stays dense. The
    ``toRGB`` layers of lower scales are left out: with alpha 0 the forward pass never uses them, and
    pruning dead weights would shift the global magnitude ranking without any effect on the output.
    Magnitudes are those of the stored N(0, 1)-scale weights, as the zoo keeps them."""
    dead = {f"toRGBLayers.{i}.module" for i in range(len(g.toRGBLayers) - 1)}
    return {name: m.weight for name, m in g.named_modules() if isinstance(m, nn.Conv2d) and name not in dead}


@dataclass(frozen=True)
class GanCheckpoint:
    """A loaded PGGAN: the generator (eval mode) and its discriminator, with provenance and a content hash
    (sha256 of the file, 16 hex digits) that names the exact weights a run started from."""

    spec: GeneratorSpec
    generator: Generator
    discriminator: Discriminator
    meta: dict = field(default_factory=dict)
    content_hash: str = ""


class _ZooConfig:
    """Stands in for the zoo's ``models.utils.config.BaseConfig`` (an empty attribute bag pickled into its
    checkpoints) so they load with ``weights_only=True``: no code from the file runs."""


def _legacy_key(name: str, own: set[str]) -> str:
    """The zoo's ``loadStateDictCompatible``: old checkpoints lack the ``.module`` before weight / bias."""
    for suffix in ("bias", "weight"):
        end = name.find(suffix)
        if end > 0 and name not in own and name[:end] + "module." + suffix in own:
            return name[:end] + "module." + suffix
    return name


def _load_into(net: nn.Module, state: dict) -> None:
    own = set(net.state_dict())
    net.load_state_dict({_legacy_key(k, own): v for k, v in state.items()}, strict=True)


def _refuse(field_name: str, path: str, found: str) -> ConfigError:
    return ConfigError(field_name, f"{path} is not a pytorch_GAN_zoo PGAN checkpoint ({found}); "
                                   f"allowed: {ZOO_FORMAT}")


def _why(exc: Exception) -> str:
    """One short line from an exception; torch's weights-only refusal names the offending global."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    picked = next((line for line in lines if line.startswith("WeightsUnpickler error:")), lines[0] if lines else "")
    picked = picked.removeprefix("WeightsUnpickler error: ").split(" was not an allowed global")[0]
    return f"{type(exc).__name__}: {picked[:200]}"


def _read(path: str, field_name: str) -> tuple[dict, bytes]:
    if not Path(path).is_file():
        raise ConfigError(field_name, f"no file {path!r}; allowed: {ZOO_FORMAT}")
    raw = Path(path).read_bytes()
    try:
        with torch.serialization.safe_globals([(_ZooConfig, "models.utils.config.BaseConfig")]):
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file gets the same one-line refusal
        raise _refuse(field_name, path, f"torch.load refused it: {_why(exc)}") from None
    if not isinstance(state, dict) or not {"config", "netG", "netD"} <= set(state):
        found = f"a dict with keys {sorted(map(str, state))[:6]}" if isinstance(state, dict) else type(state).__name__
        raise _refuse(field_name, path, found)
    return state, raw


def _build(state: dict, path: str, field_name: str) -> tuple[GeneratorSpec, Generator, Discriminator, str]:
    config = state["config"]
    config = vars(config) if isinstance(config, _ZooConfig) else config
    try:
        spec = GeneratorSpec.from_config(dict(config))
        g, d = Generator(spec), Discriminator(spec)
        weights = "avgG" if isinstance(state.get("avgG"), dict) else "netG"
        _load_into(g, state[weights])
        _load_into(d, state["netD"])
    except ConfigError as exc:
        raise _refuse(field_name, path, f"its {exc.field} is {exc.message}") from None
    except (KeyError, TypeError, ValueError, RuntimeError, AttributeError) as exc:
        raise _refuse(field_name, path, _why(exc)) from None
    return spec, g.eval(), d.eval(), weights


def load_checkpoint(path: str, field: str = "generator") -> GanCheckpoint:
    """A zoo PGAN checkpoint (``BaseGAN.save``: ``{"config", "netG", "netD", "avgG"}``) or one lipsweep wrote.

    The generator gets ``avgG`` when the file has it: the zoo's hub advises the averaged generator for
    inference (``model.test(z, getAvG=True)``, ``hubconf.py``); ``meta["generator_weights"]`` says which."""
    state, raw = _read(str(path), field)
    spec, g, d, weights = _build(state, str(path), field)
    meta = dict(state.get("lipsweep") or {})
    meta["generator_weights"] = weights
    return GanCheckpoint(spec=spec, generator=g, discriminator=d, meta=meta,
                         content_hash=hashlib.sha256(raw).hexdigest()[:16])


def save_checkpoint(path: str, spec: GeneratorSpec, generator: Generator, discriminator: Discriminator,
                    meta: dict) -> None:
    """Write the zoo's format (config as a plain dict, which the zoo's ``updateConfig`` accepts), with
    lipsweep's provenance under ``"lipsweep"``; atomically (temp file, then rename). No ``avgG``: the
    generator given is the one to use, and the zoo builds its average from ``netG`` when absent."""
    from lipsweep.core.files import atomic_write

    try:
        meta = json.loads(json.dumps(meta))  # plain types only, so the file loads with weights_only=True
    except (TypeError, ValueError) as exc:
        raise ConfigError("meta", f"not JSON-serialisable ({exc}); allowed: str, numbers, bool, None, lists, "
                                  "dicts") from None
    state = {"config": spec.to_config(), "netG": generator.state_dict(), "netD": discriminator.state_dict(),
             "lipsweep": meta}
    buffer = io.BytesIO()
    torch.save(state, buffer)
    atomic_write(Path(path), buffer.getvalue())


def _generator_only(cfg: object) -> None:
    raise ConfigError("model", "'pggan' is a pretrained generator: it runs in trials of kind 'gan' (latent "
                               "optimisation of a checkpoint), not in DIP chains; allowed here: dip, deep_decoder")


PRIORS.register("pggan", Prior(build=_generator_only, input_shape=lambda cfg, h, w: _generator_only(cfg),
                               params=_generator_only, check=_generator_only, pretrained=True))
