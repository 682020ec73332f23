"""Reading image, mask and ``.npz`` files into numpy arrays, with errors that name the offending file."""

from __future__ import annotations

import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

GREY_MODES = {"1", "L", "LA"}
SIXTEEN_BIT_MODES = {"I", "I;16", "I;16B", "I;16L"}
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
ZIP_HEADERS = (b"PK\x03\x04", b"PK\x05\x06")  # a zip archive's first bytes (the second: an empty one)
NPZ_ERRORS = (OSError, EOFError, ValueError, zipfile.BadZipFile)  # what numpy raises on a bad archive or member


def _open(path: Path) -> Image.Image:
    if not path.is_file():
        raise FileNotFoundError(f"image file not found: {path}")
    try:
        image = Image.open(path)
        image.load()
    except (UnidentifiedImageError, OSError, SyntaxError) as error:
        raise ValueError(f"cannot decode image file {path}: {error}") from error
    return image


def read_image(path: str | Path) -> np.ndarray:
    """An image as uint8 (H, W, C), C = 1 for grey files and 3 otherwise; 16-bit grey is rescaled."""
    path = Path(path)
    image = _open(path)
    if image.mode in SIXTEEN_BIT_MODES:
        values = np.asarray(image, dtype=np.float64)
        if values.min() < 0 or values.max() > 65535:
            raise ValueError(f"image file {path} has values outside the 16-bit range")
        return np.round(values / 257.0).astype(np.uint8)[..., None]
    if image.mode in GREY_MODES:
        return np.asarray(image.convert("L"))[..., None]
    return np.asarray(image.convert("RGB"))


def read_mask(path: str | Path, threshold: int = 127) -> np.ndarray:
    """A binary mask uint8 (H, W) of 0/1: grey (or any channel) values above ``threshold`` are 1."""
    grey = read_image(path).max(axis=2)
    return (grey > threshold).astype(np.uint8)


def image_size(path: str | Path) -> tuple[int, int]:
    """(width, height) from the file header, without decoding the pixels."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image file not found: {path}")
    try:
        with Image.open(path) as image:
            return image.size
    except (UnidentifiedImageError, OSError) as error:
        raise ValueError(f"cannot decode image file {path}: {error}") from error


def find_images(directory: Path) -> list[Path]:
    """Image files directly inside ``directory``, sorted by name."""
    return sorted(p for p in directory.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


@contextmanager
def open_npz(path: Path) -> Iterator[np.lib.npyio.NpzFile]:
    """An open ``.npz`` archive (pickled objects refused); ValueError naming ``path`` when it is not a zip
    archive (empty, garbage, a lone ``.npy``) or its directory is unreadable (truncated)."""
    with path.open("rb") as file:
        header = file.read(4)
    if header not in ZIP_HEADERS:
        what = "an empty file" if not header else f"a file starting with {header!r}"
        raise ValueError(f"{path} is not an .npz archive: {what}, not a zip header")
    try:
        archive = np.load(path, allow_pickle=False)
    except NPZ_ERRORS as error:
        raise ValueError(f"cannot read npz file {path}: {error} (truncated or damaged?)") from error
    with archive:
        yield archive


def npz_array(path: Path, archive: np.lib.npyio.NpzFile, key: str) -> np.ndarray:
    """The array ``key`` of an open archive; ValueError naming ``path`` and ``key`` when that member does not
    decode (damaged or truncated data, or an object array, which would need pickle)."""
    try:
        return np.asarray(archive[key])
    except NPZ_ERRORS as error:
        raise ValueError(f"{path}: cannot read array {key!r}: {error}") from error
