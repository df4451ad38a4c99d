"""The trunk store: every file of a chain lives under a key that hashes the config that determines it.

Level 0 (the dense fit) is shared by every chain with the same dense key, whatever its method or rewind
point. Every write goes to a temp name and is renamed, so a shared filesystem never shows half a file;
``paths.py`` names every file.
"""

from __future__ import annotations

import fcntl
import io
import json
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from lipsweep.core.errors import ConfigError
from lipsweep.core.files import atomic_write
from lipsweep.core.keys import SCHEMA
from lipsweep.core.paths import (
    IMAGES,
    StorePaths,
    curve_of,
    mask_of,
    record_of,
    snapshot,
)
from lipsweep.problems.images import save_image
from lipsweep.pruning import masks as masks_io
from lipsweep.pruning.masks import MaskSet

if TYPE_CHECKING:
    import torch



RECORD_FIELDS = {"level", "sparsity", "mask_hash"}  # every level record has these (records.LevelRecord)


def quarantine(path: Path, reason: str, damaged: bool = True, tag: str = "damaged", say: bool = True) -> None:
    """Move a damaged store file aside (``NAME.damaged-TIME``, kept for inspection) and say so in one line:
    the entry then reads as missing and is computed again, from the same config, to the same result."""
    aside = path.with_name(f"{path.name}.{tag}-{time.strftime('%Y%m%dT%H%M%S')}")
    try:
        os.replace(path, aside)
    except FileNotFoundError:
        return  # another reader moved it first
    if not say:
        return
    what = "is damaged" if damaged else "is set aside"
    print(f"lipsweep: store: {path} {what} ({reason}); moved to {aside.name}; it will be computed again",
          file=sys.stderr, flush=True)


def parse_json_lines(text: str, required: tuple[str, ...] = ()) -> list[dict]:
    """The JSON objects (with the ``required`` keys) in a log of one object per line, skipping torn fragments
    between them."""
    decoder, out, i = json.JSONDecoder(), [], 0
    while (i := text.find("{", i)) >= 0:
        try:
            obj, end = decoder.raw_decode(text, i)
        except json.JSONDecodeError:
            i += 1
            continue
        if isinstance(obj, dict) and all(k in obj for k in required):
            out.append(obj)
        i = end
    return out


class TrunkStore:
    """A directory of content-addressed dense runs, chain levels, masks and evaluations."""

    def __init__(self, root: Path | str, fresh_since: float | None = None):
        """``fresh_since`` (``--recompute``): entries written before this time read as missing and are moved
        aside (``NAME.replaced-TIME``), so everything is computed again and nothing old is lost."""
        self.root = Path(root)
        self.paths = StorePaths(self.root)
        self.fresh_since = fresh_since

    def _stale(self, path: Path) -> bool:
        """Whether ``path`` predates ``fresh_since``: then it is set aside and reads as missing."""
        if self.fresh_since is None:
            return False
        try:
            if path.stat().st_mtime >= self.fresh_since:
                return False
        except FileNotFoundError:
            return False
        quarantine(path, "older than --recompute", damaged=False, tag="replaced", say=False)
        return True

    def claim_schema(self) -> int | None:
        """Mark the store as written by this ``SCHEMA``; returns the older schema it held before (whose
        entries are never read: their keys differ), or None."""
        if self.paths.schema.is_file():
            found = int(self.paths.schema.read_text().strip() or 0)
            older = found if found < SCHEMA else None
        else:
            older = 1 if (self.root / "dense").is_dir() else None
        if older is not None or not self.paths.schema.is_file():
            atomic_write(self.paths.schema, f"{SCHEMA}\n".encode())
        return older

    def dense_dir(self, key: str) -> Path:
        return self.paths.dense(key)

    def chain_dir(self, key: str) -> Path:
        return self.paths.chain(key)

    def level_dir(self, chain_key: str, level: int) -> Path:
        return self.paths.level(chain_key, level)

    def eval_dir(self, key: str) -> Path:
        return self.paths.evaluation(key)

    @contextmanager
    def lock(self, name: str, wait: bool = True) -> Iterator[None]:
        """An exclusive lock across processes (flock): concurrent trials that need the same level wait for
        the one computing it, then load it. Callers re-check the store after acquiring. ``wait`` False raises
        ``BlockingIOError`` at once if another process holds it (one driver per sweep)."""
        path = self.paths.lock(name)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                fd = -1
                raise
            yield
        finally:
            if fd >= 0:
                fcntl.flock(fd, fcntl.LOCK_UN)
                os.close(fd)

    def log_fit(self, entry: dict) -> None:
        """Append one line per fit (O_APPEND lines are whole): the audit trail that shows nothing was fitted twice."""
        self.root.mkdir(parents=True, exist_ok=True)
        line = json.dumps({**entry, "pid": os.getpid()}, sort_keys=True) + "\n"
        fd = os.open(self.paths.fits_log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line.encode())
        finally:
            os.close(fd)

    def fit_log(self) -> list[dict]:
        """Every whole entry of the audit trail; a torn line (a writer killed mid-line) is skipped and never
        swallows the entry appended after it."""
        path = self.paths.fits_log
        return parse_json_lines(path.read_text(errors="replace"), ("dense",)) if path.is_file() else []

    # -- level directories ----------------------------------------------------------------------------
    def read_record(self, directory: Path) -> dict | None:
        """The level's record; a damaged one (truncated, not JSON, missing its fields) is moved aside and
        reads as missing, so the level is fitted again."""
        path = record_of(directory)
        rec = self.read_json(path)
        if rec is not None and not RECORD_FIELDS <= set(rec):
            quarantine(path, f"record without {', '.join(sorted(RECORD_FIELDS - set(rec)))}")
            return None
        return rec

    def discard_record(self, directory: Path, reason: str) -> None:
        """Move a record aside whose companion files were lost, so its level is fitted (and written) again."""
        if record_of(directory).is_file():
            quarantine(record_of(directory), reason, damaged=False)

    def has_record(self, directory: Path) -> bool:
        return record_of(directory).is_file()

    def write_level_files(self, directory: Path, images: dict, curves: list, snapshots: dict | None = None) -> None:
        """The level's images (``paths.IMAGES`` keys), outputs at chosen iterations, and curves; the record goes
        last (``write_record``)."""
        for name, pixels in images.items():
            self.write_image(directory / IMAGES[name], pixels)
        for it, pixels in (snapshots or {}).items():
            self.write_image(directory / snapshot(it), pixels)
        self.write_json(curve_of(directory), curves)

    def write_record(self, directory: Path, record: dict) -> None:
        self.write_json(record_of(directory), record)

    def relative(self, directory: Path) -> str:
        return directory.relative_to(self.root).as_posix()

    # -- generic pieces -------------------------------------------------------------------------------
    @staticmethod
    def write_json(path: Path, payload: object) -> None:
        atomic_write(path, json.dumps(payload, indent=1, sort_keys=True, default=float).encode())

    def read_json(self, path: Path) -> dict | None:
        if not path.is_file() or self._stale(path):
            return None
        try:
            found = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            quarantine(path, f"not JSON: {exc.__class__.__name__}")
            return None
        if not isinstance(found, (dict, list)):
            quarantine(path, "not a JSON object")
            return None
        return found

    @staticmethod
    def write_state(path: Path, state: dict[str, torch.Tensor]) -> None:
        import torch

        buf = io.BytesIO()
        torch.save({k: v.detach().cpu() for k, v in state.items()}, buf)
        atomic_write(path, buf.getvalue())

    def read_state(self, path: Path) -> dict[str, torch.Tensor] | None:
        """Weights (theta_j, final); a truncated or damaged file is moved aside and reads as missing."""
        import torch

        if not path.is_file() or self._stale(path):
            return None
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - torch raises RuntimeError, EOFError, UnpicklingError, ...
            quarantine(path, f"unreadable weights: {exc.__class__.__name__}")
            return None
        if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
            quarantine(path, "not a state dict")
            return None
        return state

    @staticmethod
    def write_image(path: Path, pixels: np.ndarray) -> None:
        buf = path.with_name(f".{path.name}.partial.png")
        save_image(pixels, buf)
        buf.replace(path)

    @staticmethod
    def write_mask(directory: Path, mask: MaskSet) -> None:
        masks_io.save(mask, mask_of(directory))

    def read_mask(self, directory: Path) -> MaskSet | None:
        """The level's mask, its bits and provenance verified by their hashes; a damaged one is moved aside."""
        path = mask_of(directory)
        if not path.with_suffix(".json").is_file() or self._stale(path.with_suffix(".json")):
            return None
        try:
            return masks_io.load(path)
        except ConfigError as exc:
            for part in (path.with_suffix(".json"), path.with_suffix(".npz")):
                if part.is_file():
                    quarantine(part, exc.message)
            return None

    def resolve_mask(self, ref: str) -> Path:
        """A mask file path, or ``CHAIN_KEY/L`` / ``CHAIN_KEY/level_L`` inside this store."""
        path = Path(ref)
        if path.with_suffix(".json").is_file() or (mask_of(path).with_suffix(".json")).is_file():
            return mask_of(path) if path.is_dir() else path
        key, _, level = ref.partition("/")
        level = level.removeprefix("level_")
        return mask_of(self.level_dir(key, int(level))) if level.isdigit() else path
