"""The trunk store: every file of a chain lives under a key that hashes the config that determines it.

Layout under ``root`` (the one place that names files on disk)::

    fits.log                        one JSON line per fit ever run (the audit trail)
    dense/<dense_key>/config.json   level.json   theta0.pt   final.pt   rewind_<iter>.pt   *.png   curve.json
    chains/<chain_key>/config.json  level_<L>/{mask.npz, mask.json, level.json, *.png, curve.json}
    evals/<eval_key>/config.json    level.json   *.png   curve.json

Level 0 (the dense fit) is shared by every chain with the same dense key, whatever its method or rewind
point. ``level.json`` is written last in each directory, so its presence marks a finished level; every
write goes to a temp name and is renamed, so a shared filesystem never shows half a file.
"""

from __future__ import annotations

import fcntl
import hashlib
import io
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

from . import masks as masks_io
from .images import save_image
from .masks import MaskSet, atomic_write

KEY_LENGTH = 16


def content_key(payload: object) -> str:
    """sha256 of canonical JSON (sorted keys, no whitespace): stable across runs, machines and Python versions."""
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:KEY_LENGTH]


class TrunkStore:
    """A directory of content-addressed dense runs, chain levels, masks and evaluations."""

    def __init__(self, root: Path | str):
        self.root = Path(root)

    def dense_dir(self, key: str) -> Path:
        return self.root / "dense" / key

    def chain_dir(self, key: str) -> Path:
        return self.root / "chains" / key

    def level_dir(self, chain_key: str, level: int) -> Path:
        return self.chain_dir(chain_key) / f"level_{level}"

    def eval_dir(self, key: str) -> Path:
        return self.root / "evals" / key

    @contextmanager
    def lock(self, name: str) -> Iterator[None]:
        """An exclusive lock across processes (flock): concurrent trials that need the same level wait for
        the one computing it, then load it. Callers re-check the store after acquiring."""
        path = self.root / "locks" / f"{name}.lock"
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    def log_fit(self, entry: dict) -> None:
        """Append one line per fit (O_APPEND lines are whole): the audit trail that shows nothing was fitted twice."""
        self.root.mkdir(parents=True, exist_ok=True)
        line = json.dumps({**entry, "pid": os.getpid()}, sort_keys=True) + "\n"
        fd = os.open(self.root / "fits.log", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line.encode())
        finally:
            os.close(fd)

    def fit_log(self) -> list[dict]:
        path = self.root / "fits.log"
        return [json.loads(x) for x in path.read_text().splitlines() if x.strip()] if path.is_file() else []

    # -- generic pieces -------------------------------------------------------------------------------
    @staticmethod
    def write_json(path: Path, payload: object) -> None:
        atomic_write(path, json.dumps(payload, indent=1, sort_keys=True, default=float).encode())

    @staticmethod
    def read_json(path: Path) -> dict | None:
        return json.loads(path.read_text()) if path.is_file() else None

    @staticmethod
    def write_state(path: Path, state: dict[str, torch.Tensor]) -> None:
        buf = io.BytesIO()
        torch.save({k: v.detach().cpu() for k, v in state.items()}, buf)
        atomic_write(path, buf.getvalue())

    @staticmethod
    def read_state(path: Path) -> dict[str, torch.Tensor] | None:
        return torch.load(path, map_location="cpu", weights_only=True) if path.is_file() else None

    @staticmethod
    def write_image(path: Path, pixels: np.ndarray) -> None:
        buf = path.with_name(f".{path.name}.partial.png")
        save_image(pixels, buf)
        buf.replace(path)

    @staticmethod
    def write_mask(directory: Path, mask: MaskSet) -> None:
        masks_io.save(mask, directory / "mask")

    @staticmethod
    def read_mask(directory: Path) -> MaskSet | None:
        return masks_io.load(directory / "mask") if (directory / "mask.json").is_file() else None

    def resolve_mask(self, ref: str) -> Path:
        """A mask file path, or ``CHAIN_KEY/L`` / ``CHAIN_KEY/level_L`` inside this store."""
        path = Path(ref)
        if path.with_suffix(".json").is_file() or (path / "mask.json").is_file():
            return path / "mask" if path.is_dir() else path
        key, _, level = ref.partition("/")
        level = level.removeprefix("level_")
        return self.level_dir(key, int(level)) / "mask" if level.isdigit() else path
