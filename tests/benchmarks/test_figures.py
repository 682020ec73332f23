"""Budget curves draw the 95% band of single cells and error bars over seeds; minimal-norm attacks get
robust-accuracy curves from their per-sample norms."""

from __future__ import annotations

import math

from matplotlib.collections import PolyCollection

from benchmarks import figures
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


def test_budget_curves_draw_each_attack_at_its_own_eps_budgets_only(monkeypatch):
    def record(attack: str, budget: str, settings: dict, accuracy: float) -> CellRecord:
        metrics = {"clean/accuracy": 0.9, "adv/accuracy": accuracy, "adv/accuracy_ci_low": accuracy - 0.1,
                   "adv/accuracy_ci_high": accuracy + 0.1}
        return CellRecord(f"b/{attack}/{budget}", "b", "h", "attack", "d", "m", attack, budget, 0, "done",
                          metrics=metrics, settings={"attacks": [{"settings": settings}]})

    records = [record("fgsm", "2_255", {"eps": 2 / 255}, 0.5), record("fgsm", "8_255", {"eps": 8 / 255}, 0.1),
               record("pgd", "8_255", {"eps": 8 / 255}, 0.0),
               record("bef", "0.01", {"step_size": 0.01}, 0.2)]  # an exposure step, not a perturbation budget
    drawn = {}
    monkeypatch.setattr(figures, "draw_line", lambda ax, values, summaries, **style: drawn.update(
        {style["label"]: (list(values), [s.interval for s in summaries])}))
    assert figures.budget_curves(records, ["accuracy"]) is not None
    assert drawn == {"fgsm": ([2 / 255, 8 / 255], [(0.4, 0.6), (0.0, 0.2)]), "pgd": ([8 / 255], [(-0.1, 0.1)])}
