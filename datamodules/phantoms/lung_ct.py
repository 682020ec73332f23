"""Synthetic axial chest CT slices in Hounsfield units, with an exact lung mask.

Body (fat rim, soft tissue), two lungs with parenchymal texture, vessels and ground-glass opacities,
heart, trachea (air that is not lung), spine and ribs. Opacities and vessels count as lung.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from datamodules.phantoms.shapes import Grid, smooth_noise, union

AIR, LUNG, FAT, SOFT_TISSUE, BONE = -1000.0, -860.0, -100.0, 40.0, 700.0


@dataclass(frozen=True)
class LungCTPhantom:
    """A rendered slice: ``hu`` float32 (H, W) in Hounsfield units and ``lungs`` uint8 (H, W) of 0/1."""

    hu: np.ndarray
    lungs: np.ndarray


def _mix(hu: np.ndarray, value: np.ndarray | float, alpha: np.ndarray) -> np.ndarray:
    return hu * (1.0 - alpha) + value * alpha


def _points_in(region: np.ndarray, grid: Grid, rng: np.random.Generator, count: int) -> np.ndarray:
    """``count`` grid coordinates (x, y) of random pixels where ``region`` is nearly full."""
    rows, columns = np.nonzero(region > 0.9)
    if rows.size == 0:
        return np.empty((0, 2), dtype=np.float32)
    chosen = rng.integers(0, rows.size, size=count)
    return np.stack([grid.x[rows[chosen], columns[chosen]], grid.y[rows[chosen], columns[chosen]]], axis=1)


def render_lung_ct(size: int, rng: np.random.Generator) -> LungCTPhantom:
    """An axial chest CT slice at ``size`` x ``size`` drawn from ``rng`` (anterior up)."""
    grid = Grid(size)
    half_width, half_height, centre = rng.uniform(0.78, 0.9), rng.uniform(0.55, 0.68), rng.uniform(0.0, 0.08)
    body = grid.ellipse(0.0, centre, half_width, half_height)
    inside = grid.ellipse(0.0, centre, half_width - 0.06, half_height - 0.06)
    hu = _mix(_mix(np.full((size, size), AIR, np.float32), FAT, body), SOFT_TISSUE, inside)

    lungs = union(
        size,
        [
            grid.wobbly_ellipse(
                side * rng.uniform(0.33, 0.4) * half_width / 0.85,
                centre - 0.04 + rng.normal(0.0, 0.02),
                rng.uniform(0.22, 0.28),
                rng.uniform(0.36, 0.42) * half_height / 0.62,
                rng,
                wobble=0.05,
            )
            for side in (-1.0, 1.0)
        ],
    )
    heart = grid.ellipse(
        rng.uniform(0.04, 0.12),
        centre + 0.14,
        rng.uniform(0.2, 0.25),
        rng.uniform(0.16, 0.2),
        rng.uniform(-0.4, 0.4),
    )
    spine_y = centre + half_height - 0.2
    spine = grid.disc(0.0, spine_y, 0.11)
    lungs = lungs * (1.0 - heart) * (1.0 - spine) * inside

    parenchyma = LUNG + 25.0 * smooth_noise(rng, size, 16)
    hu = _mix(hu, parenchyma, lungs)
    vessels = union(
        size, [grid.disc(x, y, rng.uniform(0.008, 0.02)) for x, y in _points_in(lungs, grid, rng, 30)]
    )
    hu = _mix(hu, rng.uniform(-80.0, 40.0), vessels * lungs)
    for x, y in _points_in(lungs, grid, rng, int(rng.integers(0, 4))):
        patch = grid.wobbly_ellipse(x, y, rng.uniform(0.06, 0.14), rng.uniform(0.05, 0.12), rng, wobble=0.15)
        hu = _mix(hu, rng.uniform(-600.0, -350.0), 0.9 * patch * lungs)

    trachea = grid.disc(rng.normal(0.0, 0.02), centre - half_height * 0.45, rng.uniform(0.035, 0.05))
    hu = _mix(hu, AIR, trachea)
    hu = _mix(hu, BONE, spine - grid.disc(0.0, spine_y, 0.08))
    hu = _mix(hu, 250.0, grid.disc(0.0, spine_y, 0.08))
    ribs = [
        grid.ellipse(
            np.cos(a) * (half_width - 0.09), centre + np.sin(a) * (half_height - 0.09), 0.03, 0.022, a
        )
        for a in np.linspace(0.0, 2.0 * np.pi, 12, endpoint=False) + rng.uniform(0.0, 0.5)
    ]
    hu = _mix(hu, BONE, union(size, ribs) * (1.0 - lungs))
    hu = hu + rng.normal(0.0, 12.0, size=(size, size)).astype(np.float32)
    return LungCTPhantom(hu.astype(np.float32), (lungs > 0.5).astype(np.uint8))
