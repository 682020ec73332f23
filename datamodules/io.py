"""Reading image and mask files into numpy arrays, with errors that name the offending file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

GREY_MODES = {"1", "L", "LA"}
SIXTEEN_BIT_MODES = {"I", "I;16", "I;16B", "I;16L"}
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


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
