"""Labelled image sets for the classification transfer (paper Fig. 6): what the trial field ``data`` names.

* ``lfw_faces``: scikit-image's ``lfw_subset`` (Labeled Faces in the Wild): 200 grey 25 x 25 crops, the first
  100 faces and the last 100 background patches (its docstring), as two classes; Lanczos-resized, grey
  replicated to RGB. Ships with a dependency, so the experiment runs offline at CPU scale.
* ``cifar10:DIR``: the CIFAR-10 python batches (``data_batch_1..5``, ``test_batch``) in DIR, bilinear-resized
  (32 px is below the 5-level hourglass's 64 px minimum); its own train/test split.
* ``imagenet20:DIR`` or a folder path: torchvision's ImageFolder layout (DIR/CLASS/IMAGE), centre-cropped
  square and Lanczos-resized; ``imagenet20`` defaults to the paper's 256 px.

Splits other than CIFAR's own are a fixed stratified 75/25 (every 4th image of a class, in sorted order, is a
test image): no seed enters, so every seed of a sweep is scored on the same test images. ``examples`` caps each
split at a class-balanced prefix (CPU scale). Bare ``cifar10`` / ``imagenet20`` are placeholders that price a
paper sweep in ``lipsweep show``; running one asks for the path.
"""

from __future__ import annotations

import hashlib
import pickle
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from lipsweep.core.errors import ConfigError
from lipsweep.core.keys import content_key
from lipsweep.core.registry import Registry
from lipsweep.kinds.base import local_path
from lipsweep.problems.images import IMAGE_SUFFIXES, content_hash

# The version of this module's results (lipsweep.core.versions): raise it in the commit that changes them.
ALGORITHM = 1

CIFAR_FILES = (*(f"data_batch_{i}" for i in range(1, 6)), "test_batch")
ALLOWED = "lfw_faces, cifar10:DIR (CIFAR-10 python batches), imagenet20:DIR or a folder DIR/CLASS/IMAGE"


@dataclass(frozen=True)
class Raw:
    """A set before decoding: items per split (indices or files), their labels, and how items become pixels."""

    classes: tuple[str, ...]
    train: tuple[Sequence, Sequence[int]]
    test: tuple[Sequence, Sequence[int]]
    pixels: Callable[[Sequence, int], torch.Tensor]  # items, size -> N x 3 x size x size uint8


@dataclass(frozen=True)
class Source:
    """A registry entry: how a name's data is read, checked and keyed; its default size; nominal split sizes
    (``lipsweep show`` prices a placeholder with them); what to give when the path is missing."""

    read: Callable[[str], Raw]
    check: Callable[[str], None]
    key: Callable[[str], str]
    counts: Callable[[str | None], tuple[int, int]]
    size: int = 64
    how: str = ""


SOURCES: Registry[Source] = Registry("data")


@dataclass(frozen=True)
class Dataset:
    """Decoded pixels (uint8, N x 3 x S x S) and labels per split; inputs are standardised per channel with
    the training split's statistics."""

    classes: tuple[str, ...]
    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    mean: torch.Tensor
    std: torch.Tensor

    def inputs(self, x: torch.Tensor) -> torch.Tensor:
        return (x.to(torch.get_default_dtype()) / 255.0 - self.mean[:, None, None]) / self.std[:, None, None]


def parse(data: str | None) -> tuple[str, str | None]:
    """``data`` -> (source name, path or None); one-line errors name the field and what is allowed."""
    if not isinstance(data, str) or not data:
        raise ConfigError("data", f"kind 'classify' needs a labelled image set; allowed: {ALLOWED}")
    name, sep, path = data.partition(":")
    if name in SOURCES and name != "folder":
        if sep and not SOURCES.get(name).how:
            raise ConfigError("data", f"{name} takes no path, got {data!r}; allowed: {ALLOWED}")
        return name, (path or None) if sep else None
    if Path(data).expanduser().is_dir():
        return "folder", data
    raise ConfigError("data", f"unknown dataset or no such folder {data!r}; allowed: {ALLOWED}")


def absolute(data: object) -> object:
    """``data`` with a folder given relative to the directory the command runs in made absolute (``DIR`` or
    ``NAME:DIR``): a Ray worker runs elsewhere. A set's name (``lfw_faces``, bare ``cifar10``) stays a name."""
    if not isinstance(data, str):
        return data
    name, sep, path = data.partition(":")
    if name in SOURCES and name != "folder":
        return f"{name}:{local_path(path)}" if sep and path else data
    return local_path(data)


def check(data: str | None) -> None:
    """Refuse what cannot be read (before any trial starts); a placeholder passes (``ready`` refuses it)."""
    name, path = parse(data)
    if path is not None:
        SOURCES.get(name).check(path)


def ready(data: str | None) -> None:
    name, path = parse(data)
    if path is None and SOURCES.get(name).how:
        raise ConfigError("data", f"{name} needs its files: {SOURCES.get(name).how}")


def data_key(data: str) -> str:
    """The set by content (every file's hash), so an edited set never reuses a ticket."""
    name, path = parse(data)
    return f"{name}:unresolved" if path is None and SOURCES.get(name).how else SOURCES.get(name).key(path)


def default_size(data: str) -> int:
    return SOURCES.get(parse(data)[0]).size


def split_counts(data: str, examples: int | None) -> tuple[int, int]:
    """Images per split (capped by ``examples``) without decoding any."""
    name, path = parse(data)
    n_train, n_test = SOURCES.get(name).counts(path)
    return (n_train, n_test) if examples is None else (min(n_train, examples), min(n_test, examples))


def load(data: str, size: int, examples: int | None) -> Dataset:
    """The set at ``size`` px, each split capped at ``examples`` (read once per process and content)."""
    ready(data)
    return _load(data, data_key(data), size, examples)


@lru_cache(maxsize=4)
def _load(data: str, key: str, size: int, examples: int | None) -> Dataset:
    name, path = parse(data)
    raw = SOURCES.get(name).read(path)
    out = []
    for items, labels in (raw.train, raw.test):
        keep = balanced(labels, examples)
        out += [raw.pixels([items[i] for i in keep], size), torch.tensor([labels[i] for i in keep], dtype=torch.long)]
    x = out[0].to(torch.get_default_dtype()) / 255.0
    return Dataset(raw.classes, *out, x.mean(dim=(0, 2, 3)), x.std(dim=(0, 2, 3)).clamp_min(1e-3))


def balanced(labels: Sequence[int], cap: int | None) -> list[int]:
    """Indices of a class-balanced prefix: classes take turns (first of each class, then second, ...)."""
    seen: dict[int, int] = {}
    rank = []
    for i, y in enumerate(labels):
        rank.append((seen.get(y, 0), y, i))
        seen[y] = seen.get(y, 0) + 1
    order = [i for _, _, i in sorted(rank)]
    return sorted(order[:cap] if cap is not None else order)


def stratified(labels: Sequence[int]) -> tuple[list[int], list[int]]:
    """Every 4th item of each class (in the given order) is a test item: a fixed 75/25 split."""
    seen: dict[int, int] = {}
    train, test = [], []
    for i, y in enumerate(labels):
        (test if seen.get(y, 0) % 4 == 3 else train).append(i)
        seen[y] = seen.get(y, 0) + 1
    return train, test


def _resize(images: Sequence[Image.Image], size: int) -> torch.Tensor:
    arrays = [np.asarray(im.convert("RGB").resize((size, size), Image.LANCZOS), dtype=np.uint8) for im in images]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()


def _split(classes: tuple[str, ...], items: list, labels: list[int], pixels) -> Raw:
    train, test = stratified(labels)
    return Raw(classes, ([items[i] for i in train], [labels[i] for i in train]),
               ([items[i] for i in test], [labels[i] for i in test]), pixels)


# -- lfw_faces ---------------------------------------------------------------------------------------------
LFW_FACES = 100  # lfw_subset(): "100 first images are faces and subsequent 100 are non-faces"


@lru_cache(maxsize=1)
def _lfw_array() -> np.ndarray:
    from skimage.data import lfw_subset

    return (lfw_subset() * 255.0).round().astype(np.uint8)


def _lfw(_: str | None) -> Raw:
    faces = _lfw_array()
    labels = [0 if i < LFW_FACES else 1 for i in range(len(faces))]
    return _split(("face", "background"), list(range(len(faces))), labels,
                  lambda items, size: _resize([Image.fromarray(faces[i]) for i in items], size))


SOURCES.register("lfw_faces", Source(read=_lfw, check=lambda p: None, counts=lambda p: (150, 50),
                                     key=lambda p: "lfw:" + hashlib.sha256(_lfw_array().tobytes()).hexdigest()[:16]))


# -- image folders (torchvision's ImageFolder layout) --------------------------------------------------------
def folder_files(path: str) -> dict[str, list[Path]]:
    """Class name -> its image files (recursive, sorted); at least two classes, or a one-line error."""
    root = Path(path).expanduser()
    if not root.is_dir():
        raise ConfigError("data", f"{path!r} is not a folder; allowed: {ALLOWED}")
    classes = {d.name: sorted(p for p in d.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
               for d in sorted(root.iterdir()) if d.is_dir()}
    classes = {name: files for name, files in classes.items() if files}
    if not classes:
        raise ConfigError("data", f"{path!r} holds no images in class sub-folders ({', '.join(IMAGE_SUFFIXES)}); "
                                  "allowed: a folder DIR/CLASS/IMAGE with one sub-folder per class")
    if len(classes) == 1:
        raise ConfigError("data", f"{path!r} has one class ({next(iter(classes))}); allowed: a folder with one "
                                  "sub-folder per class, at least two classes")
    return classes


def _open_square(path: Path) -> Image.Image:
    try:
        with Image.open(path) as im:
            im = im.convert("RGB")
    except OSError as exc:
        raise ConfigError("data", f"cannot read image {str(path)!r} ({exc.__class__.__name__}); allowed: readable "
                                  "image files") from None
    w, h = im.size
    s = min(w, h)
    return im.crop(((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s))


def _folder(path: str) -> Raw:
    classes = folder_files(path)
    items = [f for files in classes.values() for f in files]
    labels = [c for c, files in enumerate(classes.values()) for _ in files]
    return _split(tuple(classes), items, labels, lambda files, size: _resize([_open_square(f) for f in files], size))


def _folder_key(path: str) -> str:
    """Every file's class, name and bytes; hashed once per process while no file's size or mtime changes (a
    trial config is validated many times, and ImageNet-20 has ~26,000 files)."""
    root = Path(path).expanduser().resolve()
    listing = tuple((f.relative_to(root).as_posix(), st.st_size, st.st_mtime_ns)
                    for files in folder_files(str(root)).values() for f in files for st in (f.stat(),))
    return _hash_folder(str(root), listing)


@lru_cache(maxsize=8)
def _hash_folder(root: str, listing: tuple[tuple[str, int, int], ...]) -> str:
    h = hashlib.sha256()
    for rel, _, _ in listing:
        h.update(rel.encode() + b"\0" + hashlib.sha256((Path(root) / rel).read_bytes()).digest())
    return "folder:" + h.hexdigest()[:16]


def _folder_counts(path: str | None, nominal: tuple[int, int]) -> tuple[int, int]:
    if path is None:
        return nominal
    tests = sum(len(stratified([0] * len(files))[1]) for files in folder_files(path).values())
    return sum(len(files) for files in folder_files(path).values()) - tests, tests


SOURCES.register("folder", Source(read=_folder, check=folder_files, key=_folder_key,
                                  counts=lambda p: _folder_counts(p, (0, 0))))
SOURCES.register("imagenet20", Source(
    read=_folder, check=folder_files, key=_folder_key, size=256, counts=lambda p: _folder_counts(p, (26000, 1000)),
    how="give the ImageNet-20 folder (one sub-folder per class), e.g. --set data=imagenet20:/data/imagenet20"))


# -- CIFAR-10 ----------------------------------------------------------------------------------------------
def _cifar_check(path: str) -> None:
    root = Path(path).expanduser()
    missing = [f for f in CIFAR_FILES if not (root / f).is_file()]
    if missing:
        raise ConfigError("data", f"cifar10:{path} lacks {', '.join(missing)}; allowed: cifar10:DIR with the CIFAR-10 "
                                  "python batches (data_batch_1..5, test_batch: cifar-10-python.tar.gz extracted)")


def _unpickle(path: Path) -> dict:
    try:
        with path.open("rb") as f:
            return pickle.load(f, encoding="bytes")
    except (OSError, pickle.UnpicklingError, EOFError, ValueError) as exc:
        raise ConfigError("data", f"{str(path)!r} is not a CIFAR-10 python batch ({exc.__class__.__name__})") from None


def _cifar(path: str) -> Raw:
    _cifar_check(path)
    root = Path(path).expanduser()
    batches = {f: _unpickle(root / f) for f in CIFAR_FILES}
    x = {f: np.asarray(b[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32) for f, b in batches.items()}
    y = {f: [int(v) for v in b[b"labels"]] for f, b in batches.items()}
    meta = _unpickle(root / "batches.meta") if (root / "batches.meta").is_file() else {}
    names = tuple(n.decode() for n in meta.get(b"label_names", [])) or tuple(str(i) for i in range(10))
    train_x = np.concatenate([x[f] for f in CIFAR_FILES[:5]])
    arrays = {"train": train_x, "test": x["test_batch"]}

    def pixels(items: Sequence[tuple[str, int]], size: int) -> torch.Tensor:
        stack = torch.from_numpy(np.stack([arrays[s][i] for s, i in items])).to(torch.get_default_dtype())
        out = [F.interpolate(part, size=(size, size), mode="bilinear", align_corners=False)
               for part in stack.split(1024)] if len(stack) else [stack.new_zeros((0, 3, size, size))]
        return torch.cat(out).round().clamp(0, 255).to(torch.uint8)

    train_y = [v for f in CIFAR_FILES[:5] for v in y[f]]
    return Raw(names, ([("train", i) for i in range(len(train_x))], train_y),
               ([("test", i) for i in range(len(y["test_batch"]))], y["test_batch"]), pixels)


SOURCES.register("cifar10", Source(
    read=_cifar, check=_cifar_check, counts=lambda p: (50000, 10000),
    key=lambda p: content_key([content_hash(str(Path(p).expanduser() / f), "data") for f in CIFAR_FILES]),
    how="give the folder of its python batches, e.g. --set data=cifar10:/data/cifar-10-batches-py"))
