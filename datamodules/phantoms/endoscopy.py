"""Synthetic endoscopy frames with the seven EAD2019 artefact classes and their exact boxes.

Each artefact is drawn as a shape whose coverage gives its box, so boxes are tight and never empty.
Specular spots and bubbles come in clusters boxed as one region (as EAD2019 often annotates them); all
artefacts are at least about a sixth of the frame wide, large enough for detectors' smallest anchors.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import cv2
import numpy as np

from datamodules.phantoms.shapes import Grid, blend, smooth_noise, union

WHITE = np.array([1.0, 1.0, 1.0], dtype=np.float32)
MIN_BOX_PIXELS = 3


@dataclass(frozen=True)
class EndoscopyPhantom:
    """A rendered frame: image uint8 (H, W, 3), boxes float32 (N, 4) xyxy pixels, labels int64 in 1..7."""

    image: np.ndarray
    boxes: np.ndarray
    labels: np.ndarray


def _tissue(grid: Grid, rng: np.random.Generator) -> np.ndarray:
    """Pink-red mucosa with folds, capillaries and the dark rim of the endoscope's field of view."""
    base = np.array([0.86, 0.45, 0.42], dtype=np.float32) * rng.uniform(0.85, 1.1, size=3).astype(np.float32)
    angle = rng.uniform(0, np.pi)
    folds = np.sin((grid.x * np.cos(angle) + grid.y * np.sin(angle)) * rng.uniform(4, 8) + rng.uniform(0, 6))
    shading = (
        1.0 + 0.12 * smooth_noise(rng, grid.size, 4) + 0.08 * folds + 0.04 * smooth_noise(rng, grid.size, 24)
    )
    image = base * shading[..., None]
    capillaries = np.exp(-((smooth_noise(rng, grid.size, 10) / 0.12) ** 2))  # thin lines along zero crossings
    image = blend(image, np.array([0.6, 0.15, 0.17], np.float32), 0.35 * capillaries)
    rim = np.clip(1.25 - 0.55 * (grid.x**2 + grid.y**2), 0.0, 1.0)
    return image * rim[..., None]


def _box(coverage: np.ndarray) -> list[float] | None:
    """Tight xyxy pixel box of coverage > 0.5, or None when smaller than ``MIN_BOX_PIXELS``."""
    rows, columns = np.nonzero(coverage > 0.5)
    if rows.size == 0:
        return None
    box = [float(columns.min()), float(rows.min()), float(columns.max() + 1), float(rows.max() + 1)]
    return box if min(box[2] - box[0], box[3] - box[1]) >= MIN_BOX_PIXELS else None


def _rectangle(grid: Grid, rng: np.random.Generator, low: float, high: float) -> np.ndarray:
    """Coverage of a random axis-aligned rectangle with sides in [low, high] (grid units)."""
    width, height = rng.uniform(low, high, size=2)
    x0, y0 = rng.uniform(-0.9, 0.9 - width), rng.uniform(-0.9, 0.9 - height)
    inside_x = grid.coverage(np.minimum(grid.x - x0, x0 + width - grid.x))
    inside_y = grid.coverage(np.minimum(grid.y - y0, y0 + height - grid.y))
    return inside_x * inside_y


def _centre(rng: np.random.Generator, margin: float) -> tuple[float, float]:
    x, y = rng.uniform(-0.85 + margin, 0.85 - margin, size=2)
    return float(x), float(y)


Painter = Callable[[np.ndarray, Grid, np.random.Generator], tuple[np.ndarray, list[np.ndarray]]]


def _cluster(rng: np.random.Generator, count: tuple[int, int], spread: float) -> list[tuple[float, float]]:
    """Centres of a cluster of ``count`` (inclusive range) shapes scattered by ``spread`` around a point."""
    cx, cy = _centre(rng, 0.3)
    offsets = rng.normal(0.0, spread, size=(int(rng.integers(count[0], count[1] + 1)), 2))
    return [(cx + dx, cy + dy) for dx, dy in offsets]


def _specularity(
    image: np.ndarray, grid: Grid, rng: np.random.Generator
) -> tuple[np.ndarray, list[np.ndarray]]:
    spots = union(
        grid.size,
        [
            grid.ellipse(x, y, rng.uniform(0.04, 0.08), rng.uniform(0.03, 0.06), rng.uniform(0, 3))
            for x, y in _cluster(rng, (3, 6), 0.16)
        ],
    )
    return blend(image, WHITE, spots), [spots]


def _saturation(
    image: np.ndarray, grid: Grid, rng: np.random.Generator
) -> tuple[np.ndarray, list[np.ndarray]]:
    patch = union(
        grid.size, [grid.disc(x, y, rng.uniform(0.14, 0.24)) for x, y in _cluster(rng, (3, 3), 0.08)]
    )
    return blend(image, np.array([1.0, 0.97, 0.9], np.float32), patch), [patch]


def _artifact(image: np.ndarray, grid: Grid, rng: np.random.Generator) -> tuple[np.ndarray, list[np.ndarray]]:
    region = _rectangle(grid, rng, 0.4, 0.7)
    period = max(4, grid.size // 16)
    stripes = (np.arange(grid.size) // (period // 2)) % 2 == 0
    colour = np.where(stripes[None, :, None], [0.2, 0.95, 0.3], [0.9, 0.2, 0.9]).astype(np.float32)
    return blend(image, colour, 0.7 * region), [region]


def _blur(image: np.ndarray, grid: Grid, rng: np.random.Generator) -> tuple[np.ndarray, list[np.ndarray]]:
    region = _rectangle(grid, rng, 0.5, 0.9)
    blurred = cv2.GaussianBlur(image, (0, 0), grid.size / 24)
    hazy = blurred * 0.55 + 0.45 * np.array([0.95, 0.88, 0.88], np.float32)
    return blend(image, hazy, region), [region]


def _contrast(image: np.ndarray, grid: Grid, rng: np.random.Generator) -> tuple[np.ndarray, list[np.ndarray]]:
    region = _rectangle(grid, rng, 0.5, 0.9)
    dim = image.mean(axis=2, keepdims=True) * 0.15 + image * 0.15
    return blend(image, dim, region), [region]


def _bubbles(image: np.ndarray, grid: Grid, rng: np.random.Generator) -> tuple[np.ndarray, list[np.ndarray]]:
    bubbles = []
    for x, y in _cluster(rng, (3, 5), 0.12):
        radius = rng.uniform(0.08, 0.14)
        outer = grid.disc(x, y, radius)
        ring = np.clip(outer - grid.disc(x, y, radius - 2.0 * grid.pixel), 0.0, 1.0)
        image = blend(blend(image, WHITE, 0.15 * outer), np.array([0.98, 0.95, 0.95], np.float32), 0.9 * ring)
        bubbles.append(outer)
    return image, [union(grid.size, bubbles)]


def _instrument(
    image: np.ndarray, grid: Grid, rng: np.random.Generator
) -> tuple[np.ndarray, list[np.ndarray]]:
    width, length, offset = rng.uniform(0.3, 0.45), rng.uniform(0.8, 1.2), rng.uniform(-0.5, 0.5)
    along, across = (grid.x, grid.y) if rng.random() < 0.5 else (grid.y, grid.x)
    sign = rng.choice([-1.0, 1.0])
    bar = grid.coverage(np.minimum(width / 2 - np.abs(across - offset), sign * along - (1.0 - length)))
    metal = 0.45 + 0.35 * np.cos((across - offset) / width * np.pi)[..., None] * np.ones(3, np.float32)
    return blend(image, metal.astype(np.float32), bar), [bar]


PAINTERS: tuple[Painter, ...] = (
    _specularity,
    _saturation,
    _artifact,
    _blur,
    _contrast,
    _bubbles,
    _instrument,
)
# painting order: area effects first, then the instrument, then bright things on top
PAINT_ORDER = (3, 4, 2, 6, 5, 1, 0)


def render_endoscopy(size: int, rng: np.random.Generator, max_objects: int = 3) -> EndoscopyPhantom:
    """An endoscopy frame at ``size`` x ``size`` with 1..``max_objects`` artefacts drawn from ``rng``."""
    grid = Grid(size)
    image = _tissue(grid, rng)
    classes = sorted(
        rng.integers(0, len(PAINTERS), size=int(rng.integers(1, max_objects + 1))), key=PAINT_ORDER.index
    )
    boxes, labels = [], []
    for class_index in classes:
        image, shapes = PAINTERS[class_index](image, grid, rng)
        for shape in shapes:
            box = _box(shape)
            if box is not None:
                boxes.append(box)
                labels.append(class_index + 1)
    image = image + rng.normal(0.0, 0.01, size=image.shape).astype(np.float32)
    return EndoscopyPhantom(
        np.round(np.clip(image, 0.0, 1.0) * 255).astype(np.uint8),
        np.asarray(boxes, dtype=np.float32).reshape(-1, 4),
        np.asarray(labels, dtype=np.int64),
    )
