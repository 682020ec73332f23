"""The paper suites end to end on the real data sets, in their reduced (CI-size) profile, as a user runs
them: `medadv run --config NAME --profile real --profile reduced`, then the report."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.store import ResultsStore
from tests.benchmarks.cli_runs import ROOT, run_medadv
from tests.realdata import require_shared

pytestmark = [pytest.mark.slow, pytest.mark.realdata]

SUITES = {
    "exposure_attack": ("medmnist/retinamnist.npz",),
    "smia": ("medmnist/retinamnist.npz", "lung_ct_seg_mini", "ead2019_mini"),
    "ma2020": ("medmnist/retinamnist.npz", "medmnist/pneumoniamnist.npz"),
}


def require_suite_data(paths: tuple[str, ...]) -> None:
    for relative in paths:
        require_shared(relative)
        if not (ROOT.parent / "shared" / "data" / relative).exists():
            pytest.skip(f"the shipped train configs read ../shared/data/{relative}, which is absent")


def records_by_kind(store_path: Path) -> dict[str, list]:
    with ResultsStore(store_path) as store:
        assert [r.key for r in store.records(status=None) if r.status != "done"] == []
        records = store.records()
    kinds: dict[str, list] = {}
    for record in records:
        kinds.setdefault(record.kind, []).append(record)
    return kinds


@pytest.mark.parametrize("suite", sorted(SUITES))
def test_suite_runs_on_real_data_and_reports(suite, tmp_path):
    require_suite_data(SUITES[suite])
    run_medadv(["run", "--config", suite, "--profile", "real", "--profile", "reduced", "--output",
                      str(tmp_path)], timeout=900)
    kinds = records_by_kind(tmp_path / "results.db")
    attacked = kinds["attack"]
    assert attacked and all("clean/" in " ".join(r.metrics) for r in attacked)
    assert all(r.settings["task"] in {"classification", "segmentation", "detection"} for r in attacked)
    html = (tmp_path / suite / "report.html").read_text()
    assert suite in html and "<img" in html
    if suite == "exposure_attack":
        (transfer,) = [r for r in kinds["transfer"] if r.attack == "fgsm"]
        assert len(transfer.metrics) == 9  # 3 sources x 3 attacked models
        assert {r.attack for r in kinds["transfer"]} == {"fgsm", "bef", "cbef", "cbef_L1"}  # Table 1, Tables 2-3
        assert "cbef_L1 at 0.01" in html  # a row of the transfer table in the papers' layout
    if suite == "ma2020":
        assert {r.dataset for r in kinds["detection"]} == {"two_class", "multi_class"}
        assert all(any(key.endswith("/kd/auc") for key in r.metrics) for r in kinds["detection"])
    if suite == "smia":
        assert {r.settings["task"] for r in attacked} == {"classification", "segmentation", "detection"}
