"""The trunk store: every file of a chain lives under a key that hashes the config that determines it.

Level 0 (the dense fit) is shared by every chain with the same dense key, whatever its method or rewind
point. Every write goes to a temp name and is renamed, so a shared filesystem never shows half a file;
``paths.py`` names every file.
"""

from __future__ import annotations

import errno
import fcntl
import io
import json
import os
import re
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
    ES_TRACE,
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
ASIDE = re.compile(r"\.(damaged|replaced)-\d{8}T\d{6}(-\d+)?$")  # a file set aside, never read or replaced again
UNWRITABLE = (errno.EACCES, errno.EPERM, errno.EROFS)  # what a read-only store (mode, mount) answers a write


def aside_name(path: Path, tag: str) -> Path:
    """``NAME.TAG-TIME`` beside ``path``, never the name of a file set aside before (two in one second)."""
    stamp = time.strftime("%Y%m%dT%H%M%S")
    aside, n = path.with_name(f"{path.name}.{tag}-{stamp}"), 1
    while aside.exists():
        n += 1
        aside = path.with_name(f"{path.name}.{tag}-{stamp}-{n}")
    return aside


def quarantine(path: Path, reason: str, damaged: bool = True, tag: str = "damaged", say: bool = True) -> None:
    """Move a damaged store file aside (``NAME.damaged-TIME``, kept for inspection) and say so in one line:
    the entry then reads as missing and is computed again, from the same config, to the same result."""
    aside = aside_name(path, tag)
    try:
        os.replace(path, aside)
    except FileNotFoundError:
        return  # another reader moved it first
    except OSError as exc:
        if exc.errno not in UNWRITABLE:
            raise
        raise ConfigError("store", f"{path} must be set aside ({reason}) but its store is not writable "
                                   f"({exc.strerror}); make it writable (chmod -R u+w) or use a writable copy "
                                   "(--store DIR)") from None
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


def json_bytes(payload: object) -> bytes:
    """A store JSON file's bytes (one spelling, so an unchanged payload compares equal and is not rewritten)."""
    return json.dumps(payload, indent=1, sort_keys=True, default=float).encode()


class TrunkStore:
    """A directory of content-addressed dense runs, chain levels, masks and evaluations."""

    def __init__(self, root: Path | str, fresh_since: float | None = None):
        """``fresh_since`` (``--recompute``): entries written before this time read as missing and are moved
        aside (``NAME.replaced-TIME``), so everything is computed again and nothing old is lost."""
        self.root = Path(root)
        self.paths = StorePaths(self.root)
        self.fresh_since = fresh_since

    def _stale(self, path: Path) -> bool:
        """Whether ``path`` predates ``fresh_since``: then its whole entry is set aside (``_replace_entry``)
        and it reads as missing."""
        if self.fresh_since is None or not self._older(path):
            return False
        self._replace_entry(path.parent)
        return True

    def _older(self, path: Path) -> bool:
        try:
            return path.stat().st_mtime < self.fresh_since
        except FileNotFoundError:
            return False

    def _replace_entry(self, directory: Path) -> None:
        """``--recompute``: move every file of an entry (a dense, level or evaluation directory) older than the
        start aside as ``NAME.replaced-TIME``, so the old entry is kept whole and the new one, written beside
        it, neither overwrites its weights, masks, images or curves nor mixes with them."""
        if self.fresh_since is None or not directory.is_dir():
            return
        for path in sorted(directory.iterdir()):
            if (not path.name.startswith(".") and not ASIDE.search(path.name) and path.is_file()
                    and self._older(path)):
                quarantine(path, "older than --recompute", damaged=False, tag="replaced", say=False)

    @contextmanager
    def _writing(self, path: Path | None = None) -> Iterator[None]:
        """Around every write: under ``--recompute`` the old entry ``path`` lands in is set aside first, and a
        write the filesystem refuses (a read-only store, a full disk) is one line naming the store and the fix."""
        try:
            if path is not None:
                self._replace_entry(path.parent)
            yield
        except OSError as exc:
            if exc.errno == errno.ENOSPC:  # every write is a temp file renamed: what is there is whole
                raise ConfigError("store", f"{self.root}: the disk is full (writing {exc.filename or path}); free "
                                           "space, then run the same command again (with --resume after an "
                                           "interrupted sweep): every level written so far is kept") from None
            if exc.errno not in UNWRITABLE:
                raise
            why = f"writing {exc.filename or path} failed: {exc.strerror}"
            raise ConfigError("store", self._unwritable(why)) from None

    def writable(self) -> bool:
        """Whether this process may write the store: its directory and the folders in it (or, for a store not
        made yet, the nearest existing parent, where it would be created)."""
        path = self.root.absolute()
        while not path.exists() and path != path.parent:
            path = path.parent
        if not path.is_dir():
            return False
        folders = [path, *(p for p in path.iterdir() if p.is_dir())] if path == self.root.absolute() else [path]
        return all(os.access(p, os.W_OK | os.X_OK) for p in folders)

    def _unwritable(self, why: str) -> str:
        return (f"{self.root} is not a writable directory ({why}); make it writable (chmod -R u+w {self.root}) "
                "or pass --store DIR with a writable directory (a copy of this store serves the same results)")

    def require_writable(self, why: str) -> None:
        """Refuse, before any work, a command that must write to a store it cannot write."""
        if not self.writable():
            raise ConfigError("store", self._unwritable(why))

    def schema_current(self) -> bool:
        """Whether the store is marked with this ``SCHEMA`` already (``claim_schema`` then writes nothing)."""
        try:
            return int(self.paths.schema.read_text().strip() or 0) >= SCHEMA
        except (OSError, ValueError):
            return False

    def claim_schema(self) -> int | None:
        """Mark the store as written by this ``SCHEMA``; returns the older schema it held before (whose
        entries are never read: their keys differ), or None."""
        if self.paths.schema.is_file():
            found = int(self.paths.schema.read_text().strip() or 0)
            older = found if found < SCHEMA else None
        else:
            older = 1 if (self.root / "dense").is_dir() else None
        if older is not None or not self.paths.schema.is_file():
            with self._writing():
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
        with self._writing():
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

    def held(self, name: str) -> bool:
        """Whether another process holds lock ``name`` now, asked without creating anything (a driver checks
        this before Ray starts, where a node-local store must not be made yet)."""
        try:
            fd = os.open(self.paths.lock(name), os.O_RDONLY)
        except OSError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            fcntl.flock(fd, fcntl.LOCK_UN)
            return False
        except BlockingIOError:
            return True
        finally:
            os.close(fd)

    def log_fit(self, entry: dict) -> None:
        """Append one whole line per fit: the audit trail that shows nothing was fitted twice. A torn tail (a
        writer killed mid-line) is ended first, under a lock, so the new entry starts its own line."""
        line = json.dumps({**entry, "pid": os.getpid()}, sort_keys=True) + "\n"
        with self._writing():
            self.root.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.paths.fits_log, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            size = os.fstat(fd).st_size
            torn = size > 0 and os.pread(fd, 1, size - 1) != b"\n"
            os.write(fd, (("\n" if torn else "") + line).encode())
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
        """Whether the level is done as a run would find it: a record that parses and has its fields (a damaged
        one counts as missing; it is left in place, since ``show`` only reads)."""
        try:
            rec = json.loads(record_of(directory).read_text())
        except (OSError, ValueError):
            return False
        return isinstance(rec, dict) and RECORD_FIELDS <= set(rec)

    def write_level_files(self, directory: Path, images: dict, curves: list, snapshots: dict | None = None,
                          traces: list | None = None) -> None:
        """The level's images (``paths.IMAGES`` keys), outputs at chosen iterations, curves, and (with a
        detector) its early-stopping traces, one per image; the record goes last (``write_record``)."""
        for name, pixels in images.items():
            self.write_image(directory / IMAGES[name], pixels)
        for it, pixels in (snapshots or {}).items():
            self.write_image(directory / snapshot(it), pixels)
        self.write_json(curve_of(directory), curves)
        if traces:
            self.write_json(directory / ES_TRACE, traces)

    def write_record(self, directory: Path, record: dict) -> None:
        self.write_json(record_of(directory), record)

    def relative(self, directory: Path) -> str:
        return directory.relative_to(self.root).as_posix()

    # -- generic pieces -------------------------------------------------------------------------------
    def write_json(self, path: Path, payload: object) -> None:
        with self._writing(path):
            atomic_write(path, json_bytes(payload))

    def ensure_json(self, path: Path, payload: object) -> None:
        """Write ``payload`` only if ``path`` does not hold it already: serving what is stored writes nothing
        (so a read-only store can serve it)."""
        if not self.holds_json(path, payload):
            self.write_json(path, payload)

    @staticmethod
    def holds_json(path: Path, payload: object) -> bool:
        try:
            return path.read_bytes() == json_bytes(payload)
        except OSError:
            return False

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

    def write_state(self, path: Path, state: dict[str, torch.Tensor]) -> None:
        import torch

        buf = io.BytesIO()
        torch.save({k: v.detach().cpu() for k, v in state.items()}, buf)
        with self._writing(path):
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

    def write_image(self, path: Path, pixels: np.ndarray) -> None:
        buf = path.with_name(f".{path.name}.partial.png")
        with self._writing(path):
            save_image(pixels, buf)
            buf.replace(path)

    def write_mask(self, directory: Path, mask: MaskSet) -> None:
        with self._writing(mask_of(directory)):
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
