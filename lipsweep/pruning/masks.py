"""Masks as data: {conv module name -> bool tensor}, with provenance and a content hash.

On disk a mask is two files written atomically side by side:
``NAME.npz`` holds, per layer, the bit-packed mask (``np.packbits`` of the flattened bool array) under
the layer name and its shape under ``NAME.__shape__``; ``NAME.json`` holds ``format``, ``hash``
(sha256 over layer names, shapes and packed bits, in sorted name order), ``density``,
``layer_densities`` and ``meta`` (method, level, source image/task/seed, parent hash, ...).
Loading recomputes the hash and refuses a file whose bits do not match it.
"""

from __future__ import annotations

import hashlib
import io
import json
import zipfile
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from lipsweep.core.errors import ConfigError
from lipsweep.core.files import atomic_write
from lipsweep.priors import conv_weights

if TYPE_CHECKING:
    import torch
    from torch import nn

# The version of this module's results (lipsweep.core.versions): raise it in the commit that changes them.
ALGORITHM = 1

FORMAT = "lipsweep-mask/1"


@dataclass(frozen=True)
class MaskSet:
    """An immutable mask over conv weights; methods return new masks, never edit one in place."""

    masks: Mapping[str, torch.Tensor]
    meta: Mapping[str, object] = field(default_factory=dict)

    @staticmethod
    def dense(model: nn.Module, **meta: object) -> MaskSet:
        import torch

        return MaskSet({n: torch.ones_like(w, dtype=torch.bool) for n, w in conv_weights(model).items()}, meta)

    @property
    def kept(self) -> int:
        return sum(int(m.sum()) for m in self.masks.values())

    @property
    def total(self) -> int:
        return sum(m.numel() for m in self.masks.values())

    @property
    def density(self) -> float:
        return self.kept / self.total

    @property
    def sparsity(self) -> float:
        return 1.0 - self.density

    def layer_densities(self) -> dict[str, float]:
        return {n: float(m.float().mean()) for n, m in self.masks.items()}

    def layer_counts(self) -> dict[str, int]:
        return {n: int(m.sum()) for n, m in self.masks.items()}

    @property
    def hash(self) -> str:
        h = hashlib.sha256()
        for name in sorted(self.masks):
            m = self.masks[name]
            h.update(name.encode())
            h.update(str(tuple(m.shape)).encode())
            h.update(np.packbits(m.reshape(-1).cpu().numpy().astype(bool)).tobytes())
        return h.hexdigest()

    def bits(self) -> np.ndarray:
        """Every weight's kept bit, layers in name order (as ``hash`` reads them): masks compared by overlap."""
        return np.concatenate([self.masks[n].reshape(-1).cpu().numpy().astype(bool) for n in sorted(self.masks)])

    def with_meta(self, **meta: object) -> MaskSet:
        return MaskSet(self.masks, {**self.meta, **meta})

    def check_fits(self, model: nn.Module, field_name: str = "mask") -> None:
        """Names and shapes must match the model's convs exactly."""
        weights = conv_weights(model)
        missing, extra = sorted(set(weights) - set(self.masks)), sorted(set(self.masks) - set(weights))
        if missing or extra:
            raise ConfigError(field_name, f"does not fit the model: missing {missing[:3]}, unknown {extra[:3]}")
        for name, w in weights.items():
            if tuple(self.masks[name].shape) != tuple(w.shape):
                raise ConfigError(field_name, f"{name} has shape {tuple(self.masks[name].shape)}, "
                                              f"the model's weight {tuple(w.shape)}")

    def summary(self) -> dict:
        return {"format": FORMAT, "hash": self.hash, "density": self.density, "sparsity": self.sparsity,
                "kept": self.kept, "total": self.total, "layer_densities": self.layer_densities(),
                "meta": dict(self.meta), "meta_hash": meta_hash(self.meta)}


def meta_hash(meta: Mapping[str, object]) -> str:
    """The provenance's own hash (the mask hash covers only the bits): an edited method, level or source
    image no longer passes as genuine."""
    return hashlib.sha256(json.dumps(dict(meta), sort_keys=True, default=str).encode()).hexdigest()[:16]


def save(mask: MaskSet, path: Path) -> Path:
    """Write ``path.npz`` then ``path.json`` (the sidecar last: its presence marks a complete mask)."""
    path = Path(path).with_suffix("")
    arrays = {}
    for name, m in mask.masks.items():
        arrays[name] = np.packbits(m.reshape(-1).cpu().numpy().astype(bool))
        arrays[f"{name}.__shape__"] = np.asarray(tuple(m.shape), dtype=np.int64)
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    atomic_write(path.with_suffix(".npz"), buf.getvalue())
    atomic_write(path.with_suffix(".json"), json.dumps(mask.summary(), indent=1, sort_keys=True).encode())
    return path.with_suffix(".json")


def load(path: Path | str, model: nn.Module | None = None) -> MaskSet:
    """Read a mask, verify its hash (and that it fits ``model``), with a clear error otherwise."""
    import torch

    base = Path(path)
    base = base.with_suffix("") if base.suffix in (".npz", ".json") else base
    sidecar, bits = base.with_suffix(".json"), base.with_suffix(".npz")
    if not sidecar.is_file() or not bits.is_file():
        raise ConfigError("mask", f"no mask at {str(base)!r} (need both {bits.name} and {sidecar.name})")
    try:
        info = json.loads(sidecar.read_text())
        with np.load(bits) as data:
            masks = {}
            for key in data.files:
                if key.endswith(".__shape__"):
                    continue
                shape = tuple(int(s) for s in data[f"{key}.__shape__"])
                n = int(np.prod(shape))
                flat = np.unpackbits(data[key], count=n).astype(bool)
                masks[key] = torch.from_numpy(flat.reshape(shape))
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, zlib.error, json.JSONDecodeError) as exc:
        raise ConfigError("mask", f"{str(bits)!r} is corrupted or not a lipsweep mask ({exc})") from None
    if info.get("format") != FORMAT:
        raise ConfigError("mask", f"{str(sidecar)!r} has format {info.get('format')!r}; allowed: {FORMAT}")
    mask = MaskSet(masks, info.get("meta", {}))
    if mask.hash != info.get("hash"):
        raise ConfigError("mask", f"{str(bits)!r} does not match its recorded hash (corrupted or edited)")
    if "meta_hash" in info and meta_hash(mask.meta) != info["meta_hash"]:
        raise ConfigError("mask", f"{str(sidecar)!r}: its provenance (meta) does not match its recorded hash (edited)")
    if model is not None:
        mask.check_fits(model)
    return mask
