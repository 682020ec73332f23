"""Synthetic colour fundus photographs whose lesions define the diabetic-retinopathy grade (0-4).

Grades follow the international clinical DR scale in spirit: 1 = microaneurysms only; 2 = more
microaneurysms with haemorrhages and hard exudates; 3 = many haemorrhages, exudates, cotton-wool spots;
4 = grade-3 findings plus new vessels and a pre-retinal haemorrhage.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from datamodules.phantoms.shapes import Grid, blend, draw_polylines, smooth_noise, union

VESSEL_STEPS = 30
DARK_RED = np.array([0.42, 0.05, 0.04], dtype=np.float32)
EXUDATE_YELLOW = np.array([0.98, 0.88, 0.38], dtype=np.float32)
COTTON_WOOL = np.array([0.93, 0.86, 0.74], dtype=np.float32)
VESSEL_DARKENING = np.array([0.3, 0.65, 0.6], dtype=np.float32)  # per channel: vessels are dark red
NEW_VESSEL_RED = np.array([0.62, 0.06, 0.05], dtype=np.float32)
PRERETINAL_RED = np.array([0.35, 0.03, 0.03], dtype=np.float32)
DISC_COLOUR = np.array([1.0, 0.9, 0.62], dtype=np.float32)


@dataclass(frozen=True)
class GradeLesions:
    """Inclusive (low, high) counts of each lesion kind for one DR grade."""

    microaneurysms: tuple[int, int] = (0, 0)
    haemorrhages: tuple[int, int] = (0, 0)
    exudate_clusters: tuple[int, int] = (0, 0)
    cotton_wool_spots: tuple[int, int] = (0, 0)
    new_vessels: tuple[int, int] = (0, 0)
    preretinal: tuple[int, int] = (0, 0)


GRADE_LESIONS = {
    0: GradeLesions(),
    1: GradeLesions(microaneurysms=(5, 8)),
    2: GradeLesions(microaneurysms=(8, 12), haemorrhages=(2, 4), exudate_clusters=(1, 2)),
    3: GradeLesions(
        microaneurysms=(10, 14), haemorrhages=(7, 10), exudate_clusters=(2, 4), cotton_wool_spots=(2, 3)
    ),
    4: GradeLesions(
        microaneurysms=(10, 14),
        haemorrhages=(10, 14),
        exudate_clusters=(3, 5),
        cotton_wool_spots=(2, 3),
        new_vessels=(4, 6),
        preretinal=(1, 2),
    ),
}


@dataclass(frozen=True)
class FundusPhantom:
    """A rendered fundus: image uint8 (H, W, 3), lesion mask bool (H, W) and its DR grade."""

    image: np.ndarray
    lesions: np.ndarray
    grade: int


def _count(rng: np.random.Generator, bounds: tuple[int, int]) -> int:
    return int(rng.integers(bounds[0], bounds[1] + 1))


def _background(grid: Grid, rng: np.random.Generator) -> np.ndarray:
    """Orange retina with vignetting and choroidal texture."""
    base = np.array([0.80, 0.38, 0.15], dtype=np.float32) * rng.uniform(0.85, 1.1, size=3).astype(np.float32)
    radius2 = grid.x**2 + grid.y**2
    vignette = 1.0 - 0.45 * radius2
    texture = 1.0 + 0.05 * smooth_noise(rng, grid.size, 8)
    return base * (vignette * texture)[..., None]


def _vessel_tree(
    rng: np.random.Generator, start: np.ndarray, angle: float, bend: float, width: float, depth: int
) -> list[tuple[np.ndarray, float]]:
    """One vessel as a bending random walk from ``start`` (grid units), with thinner branches."""
    angles = angle + np.cumsum(bend + rng.normal(0.0, 0.08, size=VESSEL_STEPS))
    steps = 0.05 * np.stack([np.cos(angles), np.sin(angles)], axis=1)
    points = np.vstack([start, start + np.cumsum(steps, axis=0)]).astype(np.float32)
    outside = np.flatnonzero(np.hypot(points[:, 0], points[:, 1]) > 0.95)
    length = int(outside[0]) + 1 if outside.size else len(points)
    lines = [(points[:length], width)]
    if depth > 0:
        for step in np.flatnonzero(rng.random(length - 1) < 0.1) + 1:
            side = rng.choice([-1.0, 1.0])
            lines += _vessel_tree(
                rng, points[step], angles[step - 1] + side * 0.7, 0.0, width * 0.7, depth - 1
            )
    return lines


# (start angle, bend per step) of the four arcades of a right-hand optic disc, image y pointing down:
# the temporal pair leaves upwards/downwards and arches round the macula, the nasal pair runs outwards.
ARCADES = ((-np.pi / 2 - 0.5, -0.07), (np.pi / 2 + 0.5, 0.07), (-0.6, 0.0), (0.6, 0.0))


def _vessels(
    grid: Grid, rng: np.random.Generator, disc: np.ndarray, disc_radius: float, side: float
) -> np.ndarray:
    """Coverage of four arcades leaving the optic disc rim (mirrored for a left-hand disc)."""
    width = max(1.0, grid.size * 0.015)
    lines = []
    for angle, bend in ARCADES:
        if side < 0:
            angle, bend = np.pi - angle, -bend
        start = disc + 0.6 * disc_radius * np.array([np.cos(angle), np.sin(angle)], dtype=np.float32)
        lines += _vessel_tree(rng, start, angle, bend, width, depth=2)
    return draw_polylines(grid.size, lines)


def _lesion_site(rng: np.random.Generator, disc: np.ndarray) -> tuple[float, float]:
    """A random point inside the field of view, away from the optic disc."""
    while True:
        point = rng.uniform(-0.8, 0.8, size=2)
        if np.hypot(*point) < 0.82 and np.hypot(*(point - disc)) > 0.2:
            return float(point[0]), float(point[1])


def _lesion_layers(
    grid: Grid, rng: np.random.Generator, grade: int, disc: np.ndarray
) -> list[tuple[np.ndarray, np.ndarray]]:
    """(colour, coverage) per lesion kind of the grade, in painting order."""
    plan, site = GRADE_LESIONS[grade], lambda: _lesion_site(rng, disc)
    red = [
        grid.disc(*site(), max(rng.uniform(0.025, 0.04), grid.pixel))
        for _ in range(_count(rng, plan.microaneurysms))
    ]
    red += [
        grid.wobbly_ellipse(*site(), rng.uniform(0.045, 0.09), rng.uniform(0.035, 0.07), rng, wobble=0.08)
        for _ in range(_count(rng, plan.haemorrhages))
    ]
    exudates = []
    for _ in range(_count(rng, plan.exudate_clusters)):
        cx, cy = site()
        for _ in range(int(rng.integers(3, 7))):
            dx, dy = rng.normal(0.0, 0.05, size=2)
            exudates.append(grid.disc(cx + dx, cy + dy, rng.uniform(0.018, 0.035)))
    cotton_wool = [
        0.75 * grid.wobbly_ellipse(*site(), 0.07, 0.05, rng, wobble=0.2)
        for _ in range(_count(rng, plan.cotton_wool_spots))
    ]
    tufts = []
    for _ in range(_count(rng, plan.new_vessels)):
        steps = rng.normal(0.0, 0.035, size=(12, 2)).astype(np.float32)
        tufts.append(
            (np.array(site(), dtype=np.float32) + np.cumsum(steps, axis=0), max(1.0, grid.size * 0.012))
        )
    preretinal = []
    for _ in range(_count(rng, plan.preretinal)):
        cx, cy = site()
        boat = grid.ellipse(cx, cy, rng.uniform(0.12, 0.16), rng.uniform(0.1, 0.13)) * (grid.y > cy - 0.03)
        preretinal.append(boat)
    return [
        (DARK_RED, union(grid.size, red)),
        (EXUDATE_YELLOW, union(grid.size, exudates)),
        (COTTON_WOOL, union(grid.size, cotton_wool)),
        (NEW_VESSEL_RED, draw_polylines(grid.size, tufts)),
        (PRERETINAL_RED, union(grid.size, preretinal)),
    ]


def render_fundus(grade: int, size: int, rng: np.random.Generator) -> FundusPhantom:
    """A fundus photograph of DR ``grade`` at ``size`` x ``size`` drawn from ``rng``."""
    if grade not in GRADE_LESIONS:
        raise ValueError(f"grade must be in 0..4, got {grade}")
    grid = Grid(size)
    side = float(rng.choice([-1.0, 1.0]))  # left or right eye: optic disc on that side
    disc = np.array([side * rng.uniform(0.38, 0.5), rng.uniform(-0.08, 0.08)], dtype=np.float32)
    image = _background(grid, rng)
    image = image * (1.0 - 0.25 * grid.disc(-side * 0.05, 0.0, 0.2, softness=8.0))[..., None]  # macula
    disc_radius = rng.uniform(0.1, 0.13)
    image = blend(image, DISC_COLOUR, 0.9 * grid.disc(*disc, disc_radius, softness=2.0))
    vessels = _vessels(grid, rng, disc, disc_radius, side)
    image = image * (1.0 - vessels[..., None] * VESSEL_DARKENING)
    lesions = np.zeros((size, size), dtype=bool)
    for colour, coverage in _lesion_layers(grid, rng, grade, disc):
        image = blend(image, colour, coverage)
        lesions |= coverage > 0.5
    image = image * rng.uniform(0.8, 1.1) + rng.normal(0.0, 0.01, size=image.shape).astype(np.float32)
    field_of_view = grid.disc(0.0, 0.0, 0.95, softness=1.5)
    image = image * field_of_view[..., None]
    return FundusPhantom(np.round(np.clip(image, 0.0, 1.0) * 255).astype(np.uint8), lesions, grade)
