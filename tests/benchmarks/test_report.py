"""The benchmark report: tables in the papers' layouts (values in the right row and column, mean ± std over
seeds, missing metrics skipped), the results exports round-tripping their numbers, and the HTML report
opened in a real headless Chromium (no console errors, every image decoded, every table and figure there)."""

from __future__ import annotations

import csv
import statistics
from pathlib import Path

import pytest

from benchmarks.report import write_report
from benchmarks.store import CellRecord, ResultsStore
from benchmarks.tables import (
    RESULT_HEADER,
    Summary,
    Table,
    budget_table,
    checks_table,
    detection_table,
    export_csv,
    export_markdown,
    model_tables,
    perturbation_table,
    quality_table,
    result_rows,
    settings_table,
    transfer_matrices,
    transfer_matrix,
    transfer_overview,
    transfer_table,
)
from tests.benchmarks.browser import needs_chromium, render_in_chromium
from tests.benchmarks.report_store import BENCHMARK, build_store, cell

# The demo store: overview (run + failed cells); fundus resnet18 (accuracy, AUC, FPR, success rate, quality,
# perturbation), the transfer overview and two transfer matrices, one detector table; lung U-Net (Jaccard,
# Dice, pixel accuracy, quality, perturbation, task table), the attack-failure checks and attack settings per model.
# Plots: 3 + 2 heat maps + 2 (no success rate for segmentation: no quality scatter), and the analysis views:
# fundus landscape curves and surface, Grad-CAM, attribution shift, t-SNE; lung the same without t-SNE.
# Examples: one per first-seed attack cell, 7 fundus + 6 lung.
EXPECTED = {"tables": 22, "plots": 16, "examples": 13, "sections": 7}


def attack_cell(attack: str, budget: str, seed: int, **metrics: float) -> CellRecord:
    return cell("attack", "fundus", "resnet18", attack, budget, seed, metrics, "classification")


def column(table: Table, row_label: str, name: str):
    """The cell of ``table`` in the row starting with ``row_label`` and the column headed ``name``."""
    (row,) = [row for row in table.rows if row[0] == row_label]
    return row[table.header.index(name)]


@pytest.fixture(scope="module")
def demo_store(tmp_path_factory) -> ResultsStore:
    store = build_store(tmp_path_factory.mktemp("store") / "results.sqlite")
    yield store
    store.close()


@pytest.fixture(scope="module")
def report(demo_store, tmp_path_factory) -> tuple[Path, Path]:
    return write_report(demo_store, BENCHMARK, tmp_path_factory.mktemp("report"))


def test_budget_table_puts_attacks_in_rows_and_budgets_in_columns():
    records = [
        attack_cell("pgd", "8_255", 0, **{"clean/accuracy": 0.9, "adv/accuracy": 0.2}),
        attack_cell("pgd", "2_255", 0, **{"clean/accuracy": 0.9, "adv/accuracy": 0.6}),
        attack_cell("fgsm", "8_255", 0, **{"clean/accuracy": 0.9, "adv/accuracy": 0.4}),
        attack_cell("deepfool", "min", 0, **{"clean/accuracy": 0.9, "adv/accuracy": 0.1}),
    ]
    table = budget_table(records, "accuracy", clean=True)
    assert table.header == ("attack", "2/255", "8/255", "min")
    assert [row[0] for row in table.rows] == ["clean", "pgd", "fgsm", "deepfool"]
    assert column(table, "pgd", "2/255").mean == 0.6 and column(table, "pgd", "8/255").mean == 0.2
    assert column(table, "fgsm", "8/255").mean == 0.4 and column(table, "fgsm", "2/255") is None
    assert column(table, "deepfool", "min").mean == 0.1
    assert column(table, "clean", "8/255").mean == 0.9
    assert budget_table(records, "success_rate", clean=False) is None


def test_cells_are_mean_and_std_over_seeds():
    records = [attack_cell("pgd", "8_255", seed, **{"clean/accuracy": 0.9, "adv/accuracy": value})
               for seed, value in enumerate((0.2, 0.4, 0.3))]
    summary = column(budget_table(records, "accuracy", clean=True), "pgd", "8/255")
    assert summary == Summary(0.3, statistics.stdev([0.2, 0.4, 0.3]), 3)
    assert str(summary) == "0.300 ± 0.100"
    assert str(column(budget_table(records, "accuracy", clean=True), "clean", "8/255")) == "0.900 ± 0"
    assert str(Summary(0.25, 0.0, 1)) == "0.250"


def test_quality_and_perturbation_tables_follow_the_papers():
    records = [attack_cell("smia", "8_255", seed, **{
        "adv/success_rate": 0.8, "adv/ssim": 0.9, "adv/brisque": 30.0 + seed, "clean/brisque": 20.0,
        "adv/var": 2e-4, "adv/cos_positive": 0.95}) for seed in (0, 1)]
    quality = quality_table(records)
    assert quality.header == ("attack", "budget", "success rate", "SSIM", "BRISQUE")
    assert quality.rows[0][:2] == ("smia", "8/255") and str(quality.rows[0][4]) == "30.50 ± 0.71"
    assert "20" in quality.note
    perturbation = perturbation_table(records)
    assert perturbation.header == ("attack", "budget", "Var", "Cos > 0")
    assert perturbation.rows[0][2].mean == 2e-4 and perturbation.rows[0][3].mean == 0.95


def test_checks_table_lists_each_warning_once_with_its_reason(demo_store):
    records = [r for r in demo_store.records(BENCHMARK) if r.kind == "attack" and r.dataset == "synthetic_fundus"]
    table = checks_table(records)
    assert table.header == ("cell", "check", "warning")
    assert [row[:2] for row in table.rows] == [("deepfool at min", "unbounded_not_broken")] * 2  # two seeds
    assert "left accuracy 0.20" in table.rows[0][2]
    healthy = [r for r in records if r.attack != "deepfool"]
    assert checks_table(healthy).rows == (("every cell", "all checks", "passed"),)
    weak = attack_cell("bim", "8_255", 0, **{"clean/accuracy": 0.9, "adv/accuracy": 0.95})
    fgsm = attack_cell("fgsm", "8_255", 0, **{"clean/accuracy": 0.9, "adv/accuracy": 0.4})
    ((cell_name, check, reason),) = checks_table([fgsm, weak]).rows
    assert (cell_name, check) == ("bim at 8/255", "weaker_than_fgsm") and "FGSM 0.400" in reason


def test_settings_table_shows_every_stored_setting_per_cell():
    records = [attack_cell("pgd", budget, seed, **{"clean/accuracy": 0.9, "adv/accuracy": 0.2})
               for budget in ("2_255", "8_255") for seed in (0, 1)]
    table = settings_table(records)
    assert table.header == ("attack", "budget", "seed", "settings")
    assert [row[:3] for row in table.rows] == [("pgd", "2/255", "0"), ("pgd", "2/255", "1"),
                                               ("pgd", "8/255", "0"), ("pgd", "8/255", "1")]
    assert table.rows[2][3] == "eps=0.03137, steps=10, norm=linf"


def test_missing_metrics_are_skipped():
    records = [attack_cell("pgd", "8_255", 0, **{"clean/accuracy": 0.9, "adv/accuracy": 0.2, "adv/ssim": 0.9})]
    assert quality_table(records).header == ("attack", "budget", "SSIM")
    assert perturbation_table(records) is None
    titles = [table.title for table in model_tables(records)]
    assert titles == ["Adversarial accuracy", "Image quality of the adversarial examples", "Attack settings"]
    nan = attack_cell("pgd", "8_255", 1, **{"clean/accuracy": 0.9, "adv/accuracy": float("nan")})
    assert column(budget_table([*records, nan], "accuracy", clean=True), "pgd", "8/255").count == 1


def test_transfer_matrix_rows_are_sources_and_columns_targets():
    records = [cell("transfer", "fundus", "transfer", "pgd", "8_255", seed, {
        "a->a/success_rate": 1.0, "a->b/success_rate": 0.2 + 0.2 * seed, "b->a/success_rate": 0.1,
        "b->b/success_rate": 0.9, "a+b->a/success_rate": 0.95}, "classification") for seed in (0, 1)]
    matrix = transfer_matrix(records)
    assert matrix.sources == ("a", "b", "a+b") and matrix.targets == ("a", "b")
    table = transfer_table(matrix, "pgd")
    assert column(table, "a", "b").mean == pytest.approx(0.3) and column(table, "b", "a").mean == 0.1
    assert column(table, "a+b", "b") is None


def test_transfer_overview_groups_columns_by_source_with_white_box_last():
    rates = {"a->a": 1.0, "a->b": 0.3, "b->a": 0.1, "b->b": 0.9}
    records = [cell("transfer", "fundus", "transfer", attack, budget, 0,
                    {f"{pair}/success_rate": rate * scale for pair, rate in rates.items()}, "classification")
               for attack, budget, scale in (("bef", "0.01", 1.0), ("fgsm", "32_255", 0.5))]
    table = transfer_overview(transfer_matrices(records))
    assert table.header == ("attack", "a → b", "a → a", "b → a", "b → b")
    assert column(table, "fgsm at 32/255", "a → b").mean == pytest.approx(0.15)
    assert column(table, "bef at 0.01", "b → b").mean == 0.9
    assert transfer_overview(transfer_matrices([attack_cell("pgd", "8_255", 0, **{"adv/accuracy": 0.1})])) is None


def test_detection_table_has_detectors_as_columns():
    metrics = {"detect/pgd/kd/auc": 0.7, "detect/pgd/lid/auc": 0.8, "detect/pgd/pairs/advtrain": 120.0,
               "detect/transfer/fgsm->pgd/kd/auc": 0.6}
    table = detection_table([cell("detection", "fundus", "resnet18", "detection", "8_255", 0, metrics, "")], "t")
    assert table.header == ("attack", "KD", "LID", "AdvTrain pairs")
    assert column(table, "pgd", "LID").mean == 0.8 and str(column(table, "pgd", "AdvTrain pairs")) == "120"
    assert column(table, "transfer fgsm->pgd", "KD").mean == 0.6
    assert column(table, "transfer fgsm->pgd", "LID") is None


def test_csv_export_round_trips_the_numbers(demo_store, tmp_path):
    records = demo_store.records(BENCHMARK)
    with export_csv(records, tmp_path / "results.csv").open(newline="") as file:
        rows = list(csv.DictReader(file))
    assert len(rows) == len(records)
    for stored, row in zip(result_rows(records), rows, strict=True):
        for name, value in vars(stored).items():
            assert row[name] == ("" if value is None else str(value))
            if isinstance(value, float):
                assert float(row[name]) == value


def test_markdown_export_round_trips_the_numbers(demo_store, tmp_path):
    records = demo_store.records(BENCHMARK)
    lines = export_markdown(records, tmp_path / "results.md").read_text().splitlines()
    header, _, *body = [[cell.strip() for cell in line.strip("|").split("|")] for line in lines]
    assert tuple(header) == RESULT_HEADER and len(body) == len(records)
    for stored, row in zip(result_rows(records), body, strict=True):
        shown = dict(zip(RESULT_HEADER, row, strict=True))
        assert (shown["dataset"], shown["attack"], int(shown["seed"])) == (stored.dataset, stored.attack, stored.seed)
        if stored.clean is not None:
            clean, adversarial = (float(x) for x in shown["clean -> adv"].split(" -> "))
            assert clean == pytest.approx(stored.clean, abs=5e-4)
            assert adversarial == pytest.approx(stored.adversarial, abs=5e-4)
        if stored.success_rate is not None:
            assert float(shown["success rate"]) == pytest.approx(stored.success_rate, abs=5e-4)


def test_report_files_hold_every_table_and_escape_text(report):
    html_path, markdown_path = report
    page = html_path.read_text()
    assert page.count("<table") == EXPECTED["tables"]
    assert "&lt;out of memory&gt; &amp; more" in page and "<out of memory>" not in page
    assert "<script" not in page and "http" not in page.split("</head>")[0]
    markdown = markdown_path.read_text()
    assert markdown.count("| attack | 2/255 | 8/255 | min |") == 4
    figures = sorted((markdown_path.parent / "figures").glob("*.png"))
    assert len(figures) == EXPECTED["plots"] + EXPECTED["examples"]
    assert all(f"figures/{path.name}" in markdown for path in figures)


def test_report_of_sparse_cells_skips_empty_panels(tmp_path):
    records = [
        attack_cell("pgd", "8_255", 0, **{"clean/accuracy": 0.9, "adv/accuracy": 0.2}),
        cell("transfer", "fundus", "transfer", "pgd", "8_255", 0, {}, "classification"),
        cell("detection", "fundus", "resnet18", "detection", "8_255", 0, {}, "classification"),
    ]
    with ResultsStore(tmp_path / "results.sqlite") as store:
        for record in records:
            store.finish(record)
        html_path, markdown_path = write_report(store, BENCHMARK, tmp_path / "report")
    page = html_path.read_text()
    assert page.count("<table") == 3 and page.count("<img") == 1  # run, accuracy, attack settings
    assert page.count("<section") == 3 and "<h3>Transfer</h3>" not in page
    assert "Adversarial accuracy" in markdown_path.read_text()


def test_unknown_benchmark_is_refused(demo_store, tmp_path):
    with pytest.raises(ValueError, match="no_such"):
        write_report(demo_store, "no_such", tmp_path)


@needs_chromium
def test_report_renders_in_headless_chromium(report, tmp_path):
    page = render_in_chromium(report[0], tmp_path / "profile", tmp_path / "report.png")
    assert page.console_errors == []
    assert page.broken == [] and page.fetched == []
    assert page.counts == EXPECTED
    assert (tmp_path / "report.png").stat().st_size > 10_000


def test_a_single_cell_shows_its_stored_interval_and_seeds_show_their_spread():
    one = attack_cell("pgd", "8_255", 0, **{"clean/accuracy": 0.9, "adv/accuracy": 0.412,
                                           "adv/accuracy_ci_low": 0.37, "adv/accuracy_ci_high": 0.45})
    assert str(column(budget_table([one], "accuracy", clean=True), "pgd", "8/255")) == "0.412 [0.370, 0.450]"
    two = attack_cell("pgd", "8_255", 1, **{"clean/accuracy": 0.9, "adv/accuracy": 0.512})
    assert str(column(budget_table([one, two], "accuracy", clean=True), "pgd", "8/255")) == "0.462 ± 0.071"
