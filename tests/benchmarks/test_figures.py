"""Budget curves draw the 95% band of single cells and error bars over seeds; minimal-norm attacks get
robust-accuracy curves from their per-sample norms."""

from __future__ import annotations

import math

from matplotlib.collections import PolyCollection

from benchmarks.figures import draw_line, minimal_norm_curves, new_figure
from benchmarks.store import CellRecord
from benchmarks.tables import Summary


def test_a_single_seeds_interval_is_a_shaded_band_spanning_it():
    _, (ax,) = new_figure(1)
    draw_line(ax, [1.0, 2.0], [Summary(0.6, 0.0, 1, (0.5, 0.7)), Summary(0.3, 0.0, 1, (0.2, 0.45))], color="red")
    (band,) = [c for c in ax.collections if isinstance(c, PolyCollection)]
    ys = band.get_paths()[0].vertices[:, 1]
    assert math.isclose(ys.min(), 0.2) and math.isclose(ys.max(), 0.7)


def test_several_seeds_get_error_bars_and_no_band():
    _, (ax,) = new_figure(1)
    draw_line(ax, [1.0, 2.0], [Summary(0.6, 0.1, 3), None], color="red")
    assert not [c for c in ax.collections if isinstance(c, PolyCollection)]
    assert ax.lines and ax.lines[0].get_ydata()[0] == 0.6


def test_minimal_norm_curves_need_per_sample_norms():
    def record(key: str, attack: str) -> CellRecord:
        settings = {"attacks": [{"settings": {"norm": "l2"}}]}
        return CellRecord(key, "b", "h", "attack", "d", "m", attack, "min", 0, "done", settings=settings)

    records = [record("b/fmn", "fmn"), record("b/deepfool", "deepfool")]
    norms = {"b/fmn": {"norm": {"a": 0.5, "b": 1.5, "c": float("inf")}}, "b/deepfool": {"adv": {"a": 1.0}}}
    image = minimal_norm_curves(records, lambda key: norms[key])
    assert image is not None and image.png.startswith(b"\x89PNG")
    assert minimal_norm_curves(records[1:], lambda key: norms[key]) is None
