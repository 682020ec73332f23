"""Drawing primitives on a normalised grid: antialiased discs and ellipses, smooth noise, blending."""

from __future__ import annotations

import cv2
import numpy as np


class Grid:
    """Pixel-centre coordinates of a ``size`` x ``size`` image in [-1, 1]; x to the right, y down."""

    def __init__(self, size: int) -> None:
        axis = (np.arange(size, dtype=np.float32) + 0.5) / size * 2.0 - 1.0
        self.size = size
        self.y, self.x = np.meshgrid(axis, axis, indexing="ij")
        self.pixel = 2.0 / size  # one pixel in grid units

    def coverage(self, signed_distance: np.ndarray, softness: float = 1.0) -> np.ndarray:
        """Antialiased coverage in [0, 1] of the region where ``signed_distance`` (grid units) is > 0."""
        return np.clip(signed_distance / (self.pixel * softness) + 0.5, 0.0, 1.0)

    def _window(self, cx: float, cy: float, extent: float) -> tuple[slice, slice]:
        """Row and column slices of the pixels within ``extent`` (grid units) of (cx, cy)."""

        def span(centre: float) -> slice:
            low = int(np.floor((centre - extent + 1.0) / self.pixel)) - 1
            high = int(np.ceil((centre + extent + 1.0) / self.pixel)) + 1
            return slice(min(max(low, 0), self.size), min(max(high, 0), self.size))

        return span(cy), span(cx)

    def _paint(self, cx: float, cy: float, extent: float, shape) -> np.ndarray:
        """Full-size coverage, evaluating ``shape(dx, dy)`` only inside the window around (cx, cy)."""
        canvas = np.zeros((self.size, self.size), dtype=np.float32)
        rows, columns = self._window(cx, cy, extent)
        canvas[rows, columns] = shape(self.x[rows, columns] - cx, self.y[rows, columns] - cy)
        return canvas

    def ellipse(
        self, cx: float, cy: float, rx: float, ry: float, angle: float = 0.0, softness: float = 1.0
    ) -> np.ndarray:
        """Coverage of an ellipse with semi-axes ``rx``, ``ry`` rotated by ``angle`` radians."""
        cos, sin = np.cos(angle), np.sin(angle)

        def shape(dx: np.ndarray, dy: np.ndarray) -> np.ndarray:
            u, v = (dx * cos + dy * sin) / rx, (-dx * sin + dy * cos) / ry
            return self.coverage((1.0 - np.sqrt(u * u + v * v)) * min(rx, ry), softness)

        return self._paint(cx, cy, max(rx, ry) + softness * self.pixel, shape)

    def disc(self, cx: float, cy: float, radius: float, softness: float = 1.0) -> np.ndarray:
        """Coverage of a disc."""
        return self.ellipse(cx, cy, radius, radius, softness=softness)

    def wobbly_ellipse(
        self, cx: float, cy: float, rx: float, ry: float, rng: np.random.Generator, wobble: float
    ) -> np.ndarray:
        """Coverage of an ellipse whose radius varies with angle by low harmonics of amplitude ``wobble``."""
        harmonics = [(k, wobble * rng.uniform(-1, 1), rng.uniform(0, 2 * np.pi)) for k in (2, 3, 4)]

        def shape(dx: np.ndarray, dy: np.ndarray) -> np.ndarray:
            u, v = dx / rx, dy / ry
            theta = np.arctan2(v, u)
            scale = 1.0 + sum(a * np.cos(k * theta + phase) for k, a, phase in harmonics)
            return self.coverage((scale - np.sqrt(u * u + v * v)) * min(rx, ry))

        return self._paint(cx, cy, max(rx, ry) * (1.0 + 3.0 * wobble) + self.pixel, shape)


def smooth_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """A smooth random field (size, size), zero mean and unit deviation, about ``cells`` blobs across."""
    coarse = rng.standard_normal((cells, cells)).astype(np.float32)
    field = cv2.resize(coarse, (size, size), interpolation=cv2.INTER_CUBIC)
    return (field - field.mean()) / (field.std() + 1e-6)


def blend(image: np.ndarray, colour: np.ndarray | float, alpha: np.ndarray) -> np.ndarray:
    """``image`` with ``colour`` painted over it at opacity ``alpha`` (H, W)."""
    alpha = alpha[..., None] if image.ndim == 3 else alpha
    return image * (1.0 - alpha) + np.asarray(colour, dtype=np.float32) * alpha


def draw_polylines(size: int, lines: list[tuple[np.ndarray, float]]) -> np.ndarray:
    """Antialiased coverage (size, size) in [0, 1] of polylines given as (points in grid units, width px)."""
    canvas = np.zeros((size, size), dtype=np.uint8)
    shift = 4  # sub-pixel precision of cv2 drawing
    for points, width in lines:
        pixels = np.round(((points + 1.0) / 2.0 * size - 0.5) * (1 << shift)).astype(np.int32)
        cv2.polylines(canvas, [pixels], False, 255, max(1, int(round(width))), cv2.LINE_AA, shift)
    return canvas.astype(np.float32) / 255.0


def union(size: int, coverages: list[np.ndarray]) -> np.ndarray:
    """Pixel-wise maximum of coverages (size, size); zeros when there are none."""
    return np.maximum.reduce(coverages) if coverages else np.zeros((size, size), dtype=np.float32)
