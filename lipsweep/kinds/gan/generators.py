"""Which generator a GAN trial uses (paper Section 5): the generators registry (a shipped checkpoint, or a
known architecture whose weights the user supplies), what validation and keys need from a checkpoint
without holding its weights, the fine-tuning data by content, and images at a generator's size. ``pggan`` joins the priors registry
here: a prior whose weights come from a checkpoint, run by trial kind ``gan``."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from lipsweep.core.errors import ConfigError
from lipsweep.core.keys import content_key
from lipsweep.core.paths import DATA
from lipsweep.core.registry import Registry
from lipsweep.priors.pggan import (
    Generator,
    GeneratorSpec,
    load_checkpoint,
    masked_weights,
    pggan_256_spec,
)
from lipsweep.problems.images import IMAGE_SUFFIXES, content_hash, load_image
from lipsweep.problems.metrics import luma
from lipsweep.pruning.masks import MaskSet

# The version of this module's results (lipsweep.core.versions): raise it in the commit that changes them.
ALGORITHM = 1

GENERATOR_ROOT = DATA / "generators"
DEFAULT_GENERATOR = "faces32"

@dataclass(frozen=True)
class GeneratorSource:
    """A named generator: a shipped checkpoint, or a known architecture whose weights the user supplies
    (``--generator PATH``); its spec alone prices a sweep (``lipsweep show``) before the file is at hand."""

    path: Path | None
    spec: Callable[[], GeneratorSpec] | None = None
    how: str = ""
    train_images: int = 0  # what its fine-tuning data holds, for pricing (CelebA-HQ: 30,000)


GENERATORS: Registry[GeneratorSource] = Registry("generator")
GENERATORS.register("faces32", GeneratorSource(GENERATOR_ROOT / "faces32.pt"))
GENERATORS.register("pggan_celebahq_256", GeneratorSource(
    None, pggan_256_spec, "pytorch_GAN_zoo's PGAN celebAHQ-256 (the paper's): its weights are not shipped and "
                          "nothing is downloaded; pass --generator PATH to that checkpoint", train_images=30_000))


def resolve_generator(ref: str | None) -> Path | None:
    """A registered generator's file (None: its weights are not here), or a checkpoint path."""
    ref = ref or DEFAULT_GENERATOR
    if ref in GENERATORS:
        path = GENERATORS.get(ref).path
        if path is not None and not path.is_file():
            raise ConfigError("generator", f"{ref}: its checkpoint {path} is missing from this install (reinstall "
                                           "lipsweep, or make one with `lipsweep gan train`)")
        return path
    path = Path(ref).expanduser()
    if path.is_file():
        return path
    raise ConfigError("generator", f"no registered generator or file {ref!r}; allowed: {', '.join(GENERATORS)}, or "
                                   "the path of a pytorch_GAN_zoo PGAN checkpoint (e.g. celebAHQ-256)")


@dataclass(frozen=True)
class GeneratorInfo:
    """What validation and keys need from a checkpoint, without holding its weights. ``path`` is empty for a
    registered generator whose weights are not here (it can be priced, not run)."""

    path: str
    content_hash: str
    latent: int
    size: int
    channels: int
    masked_total: int
    flops: float  # 2 x multiply-adds of one generator forward pass (``lipsweep show``'s estimate)
    data: str | None  # the data it was trained on, as its meta records (lipsweep's own generators)
    holdout: int
    train_images: int
    dense_hash: str  # the hash of the all-ones mask: level 0's evaluation key


def generator_info(ref: str | None) -> GeneratorInfo:
    path = resolve_generator(ref)
    if path is None:
        return _spec_info(ref)
    path = path.resolve()
    stat = path.stat()
    return _info(str(path), stat.st_size, stat.st_mtime_ns)


@lru_cache(maxsize=16)
def _info(path: str, nbytes: int, mtime_ns: int) -> GeneratorInfo:
    ckpt = load_checkpoint(path)
    return _describe(ckpt.generator, ckpt.spec, path, ckpt.content_hash, ckpt.meta)


@lru_cache(maxsize=4)
def _spec_info(name: str) -> GeneratorInfo:
    spec = GENERATORS.get(name).spec()
    with torch.random.fork_rng(devices=[]):
        g = Generator(spec)
    return _describe(g, spec, "", f"absent:{name}", {"train_images": GENERATORS.get(name).train_images})


def dense_mask(g: torch.nn.Module) -> MaskSet:
    """Level 0's mask: every weight generator IMP may prune, kept."""
    return MaskSet({n: torch.ones_like(w, dtype=torch.bool) for n, w in masked_weights(g).items()})


def _describe(g: torch.nn.Module, spec: GeneratorSpec, path: str, digest: str, meta: dict) -> GeneratorInfo:
    dense = dense_mask(g)
    return GeneratorInfo(path, digest, spec.latent, spec.size, spec.out_channels, dense.total,
                         forward_flops(g, spec.latent), meta.get("data"), int(meta.get("holdout", 0)),
                         int(meta.get("train_images", 0)), dense.hash)


def forward_flops(g: torch.nn.Module, latent: int) -> float:
    """2 x multiply-adds of one forward pass, counted with hooks on every conv and linear layer."""
    total = [0.0]

    def hook(module, inputs, output) -> None:
        w = module.weight
        total[0] += 2.0 * w[0].numel() * output.numel()

    handles = [m.register_forward_hook(hook) for m in g.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    try:
        with torch.no_grad():
            g(torch.zeros(1, latent))
    finally:
        for h in handles:
            h.remove()
    return total[0]


def data_key(data: str | None, info: GeneratorInfo) -> str:
    """Fine-tuning data by content: a folder's files by hash, the generator's own split by its checkpoint."""
    if data is None:
        return f"own:{info.content_hash}"
    files = image_files(data)
    return content_key([content_hash(str(f), "data") for f in files])


def image_files(folder: str) -> list[Path]:
    root = Path(folder).expanduser()
    if not root.is_dir():
        raise ConfigError("data", f"{folder!r} is not a folder; allowed: lfw (for training) or a folder of images "
                                  "(any layout)")
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise ConfigError("data", f"{folder!r} holds no images ({', '.join(IMAGE_SUFFIXES)})")
    return files


def clean_pixels(image: str, info: GeneratorInfo) -> np.ndarray:
    """The image at the generator's size: shorter side resized, centre square, grey (luma) for a 1-channel G."""
    pixels = load_image(image, info.size, multiple=1, min_cells=1).pixels
    h, w = pixels.shape[:2]
    top, left = (h - info.size) // 2, (w - info.size) // 2
    pixels = pixels[top:top + info.size, left:left + info.size]
    return luma_channel(pixels) if info.channels == 1 else pixels


def luma_channel(pixels: np.ndarray) -> np.ndarray:
    """BT.601 luma in [0, 1] as an HxWx1 image (``metrics.luma`` is the SR metric's offset Y)."""
    y = (luma(pixels) - 16.0 / 255.0) * 255.0 / 219.0
    return np.clip(y, 0.0, 1.0)[..., None].astype(np.float32)


def rgb(pixels: np.ndarray) -> np.ndarray:
    return np.repeat(pixels, 3, axis=2) if pixels.shape[2] == 1 else pixels
