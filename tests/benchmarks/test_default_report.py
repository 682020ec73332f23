"""The default benchmark (`make run`) in its reduced profile end to end, as a user runs it, and its report
opened in headless Chromium: the views that show why a model breaks are there, each figure captioned."""

from __future__ import annotations

import pytest

from tests.benchmarks.browser import RenderedPage, needs_chromium, render_in_chromium
from tests.benchmarks.cli_runs import run_medadv

pytestmark = pytest.mark.slow

# Each view of the report, told by the title or caption the report gives it (benchmarks/figures.py,
# analysis_figures.py and the example legends of benchmarks/report.py).
VIEWS = {
    "budget curves with bands": lambda f: f["title"].endswith("against budget") and "shaded 95%" in f["caption"],
    "loss landscape": lambda f: f["title"] == "Loss landscape around the test samples",
    "Grad-CAM": lambda f: "Grad-CAM" in f["caption"],
    "t-SNE": lambda f: "(t-SNE)" in f["title"],
    "mask overlays": lambda f: f["kind"] == "example" and "green: predicted mask" in f["caption"],
    "box overlays": lambda f: f["kind"] == "example" and "yellow: detected boxes" in f["caption"],
}
MIN_FIGURES = 10


def missing_views(page: RenderedPage) -> list[str]:
    return [view for view, shows in VIEWS.items() if not any(shows(figure) for figure in page.figures)]


@needs_chromium
def test_reduced_default_run_reports_why_models_break(tmp_path):
    output = tmp_path / "run"
    run_medadv(["run", "--profile", "reduced", "--output", str(output)], timeout=900)
    page = render_in_chromium(output / "default" / "report.html", tmp_path / "profile")
    assert page.console_errors == []
    assert page.broken == [] and page.fetched == []
    assert page.counts["plots"] + page.counts["examples"] >= MIN_FIGURES, page.counts
    assert [figure["title"] for figure in page.figures if not figure["caption"]] == []
    assert missing_views(page) == [], [figure["title"] for figure in page.figures]
