"""Shipped test images by name, any image file by path, and the DIP's crop to the network's granularity.

Names are ``SET/stem`` (``Set5/baby``, ``DIP/F16_GT``, ``Set14/zebra``). The DIP folder keeps its
subfolders on disk; a stem that occurs in two of them (``kate``) is reachable only by its full name
(``DIP/inpainting/kate``, ``DIP/restoration/kate``). Provenance: ``data/images/PROVENANCE.md``.
"""

from __future__ import annotations

import fnmatch
import hashlib
import sys
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from lipsweep.core.errors import ConfigError
from lipsweep.core.paths import DATA

# The version of this module's results (lipsweep.core.versions): raise it in the commit that changes them.
ALGORITHM = 1

IMAGE_ROOT = DATA / "images"
EXIF_ORIENTATION = 0x0112
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


@lru_cache(maxsize=1)
def catalog() -> dict[str, Path]:
    """Every addressable name -> file: the full relative name always, the short one where unique."""
    files = sorted(p for p in IMAGE_ROOT.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    full = {p.relative_to(IMAGE_ROOT).with_suffix("").as_posix(): p for p in files}
    short: dict[str, list[Path]] = {}
    for p in files:
        top = p.relative_to(IMAGE_ROOT).parts[0]
        short.setdefault(f"{top}/{p.stem}", []).append(p)
    names = {name: paths[0] for name, paths in short.items() if len(paths) == 1}
    names.update(full)
    return dict(sorted(names.items()))


def image_names() -> list[str]:
    """Preferred names for listing: the short name where unique, else the full one."""
    by_path: dict[Path, str] = {}
    for name, path in catalog().items():
        if path not in by_path or len(name) < len(by_path[path]):
            by_path[path] = name
    return sorted(by_path.values())


def resolve(name_or_path: str, field: str = "image") -> Path:
    """A shipped image name or an existing file path -> path; a clear error otherwise."""
    names = catalog()
    if name_or_path in names:
        return names[name_or_path]
    path = Path(name_or_path).expanduser()
    if path.is_file():
        return path
    ambiguous = sorted(n for n in names if n.endswith("/" + name_or_path.split("/")[-1]) and n.count("/") == 2)
    if ambiguous and name_or_path.count("/") == 1:
        raise ConfigError(field, f"{name_or_path!r} is ambiguous; use one of {', '.join(ambiguous)}")
    raise ConfigError(
        field,
        f"no shipped image or file {name_or_path!r}; allowed: a file path or a name from "
        f"`lipsweep images` ({', '.join(image_names()[:6])}, ...)",
    )


def is_pattern(value: object) -> bool:
    """An ``image`` axis value that names several images: a glob (``Set12/*``) or a folder."""
    return isinstance(value, str) and (any(c in value for c in "*?[") or Path(value).expanduser().is_dir())


def expand_images(pattern: str, field: str = "image") -> list[str]:
    """A set of images for an experiment axis (Table 5's sets): shipped names matching a glob (``Set12/*``,
    ``Set5/b*``), every image file in a folder, or files matching a path glob; sorted, each image once."""
    path = Path(pattern).expanduser()
    if path.is_dir():
        found = sorted(str(p) for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    else:
        found = [n for n in image_names() if fnmatch.fnmatchcase(n, pattern)]
        if not found:
            found = sorted(str(p) for p in path.parent.glob(path.name) if p.suffix.lower() in IMAGE_SUFFIXES)
    if not found:
        raise ConfigError(field, f"{pattern!r} matches no image; allowed: a glob over shipped names (Set12/*, "
                                 f"Set5/*), a folder of image files ({', '.join(IMAGE_SUFFIXES)}) or a path glob")
    return found


def content_hash(name_or_path: str, field: str = "image") -> str:
    """sha256 of the file's bytes (16 hex digits): store keys name an image by content, so an edited file
    never reuses results computed from its old pixels."""
    path = resolve(name_or_path, field).resolve()
    stat = path.stat()
    return _file_hash(str(path), stat.st_size, stat.st_mtime_ns)


@lru_cache(maxsize=1024)
def _file_hash(path: str, size: int, mtime_ns: int) -> str:
    """The bytes' hash; an image whose EXIF orientation turns it is fitted upright, so its hash also says so
    (results computed from it sideways, before orientation was applied, are never served as upright ones)."""
    data = Path(path).read_bytes()
    turned = exif_orientation(path) not in (None, 1)
    return hashlib.sha256(data + (b"|exif-upright" if turned else b"")).hexdigest()[:16]


def exif_orientation(path: str | Path) -> int | None:
    """The EXIF orientation tag (1: upright; 2-8: mirrored or turned; None: none or not an image)."""
    try:
        with Image.open(path) as img:
            return img.getexif().get(EXIF_ORIENTATION)
    except (UnidentifiedImageError, OSError, SyntaxError):
        return None


@dataclass(frozen=True)
class LoadedImage:
    """An RGB float image in [0, 1], HxWx3, plus what was done to it on the way in."""

    pixels: np.ndarray
    source: str
    notes: tuple[str, ...] = ()
    original: tuple[int, int] = (0, 0)  # width x height of the file, before resize and crop


def _open(path: Path, field: str) -> Image.Image:
    """The image as a viewer shows it: EXIF orientation applied (a portrait photo is fitted upright)."""
    try:
        img = Image.open(path)
        img.load()
    except (UnidentifiedImageError, OSError) as exc:
        raise ConfigError(field, f"{str(path)!r} is not a readable image file ({exc.__class__.__name__})") from None
    return ImageOps.exif_transpose(img)


def _to_rgb(img: Image.Image) -> tuple[Image.Image, tuple[str, ...]]:
    if img.mode == "RGB":
        return img, ()
    note = f"converted {img.mode} image to RGB"
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):  # PIL's convert clips 16-bit values at 255: 98% white
        img = Image.fromarray(np.rint(np.asarray(img, dtype=np.float64) / 257.0).clip(0, 255).astype(np.uint8))
        note += " (16-bit values scaled to 8 bits)"
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        note += " (alpha channel dropped)"
    return img.convert("RGB"), (note,)


def resize_shorter_side(img: Image.Image, size: int, resample: int = Image.LANCZOS) -> Image.Image:
    """Resize so the shorter side is ``size``, keeping aspect (Lanczos for images, nearest for masks)."""
    w, h = img.size
    scale = size / min(w, h)
    new = (max(1, round(w * scale)), max(1, round(h * scale)))
    return img if new == (w, h) else img.resize(new, resample)


def crop_to_multiple(img: Image.Image, d: int) -> Image.Image:
    """Center crop so both sides are multiples of ``d`` (DIP's ``crop_image``)."""
    w, h = img.size
    nw, nh = w - w % d, h - h % d
    left, top = (w - nw) // 2, (h - nh) // 2
    return img if (nw, nh) == (w, h) else img.crop((left, top, left + nw, top + nh))


def prepare(img: Image.Image, size: int | None, multiple: int, resample: int) -> Image.Image:
    """The one geometry pipeline for images and their masks, so both always line up."""
    if size is not None:
        img = resize_shorter_side(img, size, resample)
    return crop_to_multiple(img, multiple)


def check_geometry(h: int, w: int, multiple: int, min_pixels: int, field: str = "image") -> None:
    """The net downsamples by ``multiple``; BatchNorm in train mode needs > 1 value at the deepest level."""
    if h < multiple or w < multiple or (h // multiple) * (w // multiple) < min_pixels:
        need = multiple * 2
        raise ConfigError(
            field,
            f"{w}x{h} after cropping to multiples of {multiple} is too small; the network needs both sides "
            f">= {multiple} px and at least one >= {need} px (use a larger image or --size >= {need})",
        )


def check_image(name_or_path: str, size: int | None, multiple: int = 32, min_cells: int = 2,
                field: str = "image") -> tuple[int, int]:
    """Up front, before any cluster work: the file is an image and is big enough after resize and crop.
    Reads the header only (cached per file version); returns the file's width x height."""
    path = resolve(name_or_path, field)
    stat = path.stat()
    return _checked(str(path), stat.st_size, stat.st_mtime_ns, size, multiple, min_cells, field)


@lru_cache(maxsize=4096)
def _checked(path: str, nbytes: int, mtime_ns: int, size: int | None, multiple: int, min_cells: int,
             field: str) -> tuple[int, int]:
    try:
        with Image.open(path) as img:
            img.verify()
        with Image.open(path) as img:  # verify() leaves the image unusable: the header again
            turned = img.getexif().get(EXIF_ORIENTATION) in (5, 6, 7, 8)  # a quarter turn swaps the sides
            w, h = img.size[::-1] if turned else img.size
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        raise ConfigError(field, f"{path!r} is not a readable image file ({exc.__class__.__name__})") from None
    rw, rh = (w, h) if size is None else (max(1, round(w * size / min(w, h))), max(1, round(h * size / min(w, h))))
    check_geometry(rh - rh % multiple, rw - rw % multiple, multiple, min_cells, field)
    return w, h


def load_image(name_or_path: str, size: int | None = None, multiple: int = 32, min_cells: int = 2,
               field: str = "image", channels: int = 3) -> LoadedImage:
    """Load, convert to RGB (saying so) or, with ``channels`` 1, to grey (HxWx1: the grayscale benchmarks'
    1-channel setting, Table 5), optionally resize, and crop to the network's granularity."""
    if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size <= 0):
        raise ConfigError("size", f"must be a positive integer, got {size!r}")
    path = resolve(name_or_path, field)
    img, notes = _to_rgb(_open(path, field))
    if channels == 1:
        img = img.convert("L")
    original = img.size
    img = prepare(img, size, multiple, Image.LANCZOS)
    check_geometry(img.size[1], img.size[0], multiple, min_cells, field)
    pixels = np.asarray(img, dtype=np.float32) / 255.0
    pixels = pixels[..., None] if pixels.ndim == 2 else pixels
    return LoadedImage(pixels=pixels, source=str(name_or_path), notes=notes, original=original)


def load_mask_image(name_or_path: str, shape: tuple[int, int], size: int | None, multiple: int = 32,
                    field: str = "mask", original: tuple[int, int] | None = None) -> np.ndarray:
    """A binary keep-mask image (white = known pixel), resized/cropped like its image; HxW bool. With
    ``original`` (the image file's width x height) the mask file must have that size: resizing both would
    otherwise stretch a mask made for another image until it fits."""
    path = resolve(name_or_path, field)
    img = _open(path, field)
    if original is not None and img.size != tuple(original):
        raise ConfigError(field, f"mask file is {img.size[0]}x{img.size[1]} but the image file is "
                                 f"{original[0]}x{original[1]}; use a mask made for this image")
    img = img.convert("L")
    img = prepare(img, size, multiple, Image.NEAREST)
    mask = np.asarray(img) > 127
    if mask.shape != shape:
        raise ConfigError(field, f"mask is {mask.shape[1]}x{mask.shape[0]} after resize/crop but the image is "
                                 f"{shape[1]}x{shape[0]}; use a mask made for this image")
    return mask


def save_image(pixels: np.ndarray, path: Path) -> None:
    """Write an HxWx3 (or HxWx1, grey) float image in [0, 1] as 8-bit PNG."""
    arr = np.clip(np.rint(np.asarray(pixels) * 255.0), 0, 255).astype(np.uint8)
    arr = arr[..., 0] if arr.ndim == 3 and arr.shape[-1] == 1 else arr
    Image.fromarray(arr).save(path)


def warn(notes: tuple[str, ...], source: str) -> None:
    for note in notes:
        print(f"lipsweep: note: {source}: {note}", file=sys.stderr)
