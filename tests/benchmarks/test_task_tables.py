"""Per-task tables: segmentation and detection scores clean and under each attack."""

import pytest

from benchmarks.tables import TASK_COLUMNS, model_tables, task_table
from tests.benchmarks.report_store import cell


def detection_cells() -> list:
    clean = {"map": 0.6, "map_50": 0.9, "disappearance_rate": 0.05, "hallucinations_per_image": 0.2,
             "misclassification_rate": 0.03, "true_positive_rate": 0.92}
    cells = []
    for attack, fall in (("tog_vanishing", 0.8), ("tog_fabrication", 0.5)):
        adv = {name: value * (1 - fall) for name, value in clean.items()}
        metrics = {f"clean/{k}": v for k, v in clean.items()} | {f"adv/{k}": v for k, v in adv.items()}
        cells.append(cell("attack", "synthetic_endoscopy", "faster_rcnn", attack, "8_255", 0, metrics, "detection"))
    return cells


def test_detection_table_has_a_clean_row_then_one_row_per_attack():
    records = detection_cells()
    table = task_table(records)
    assert table.header[:2] == ("attack", "budget")
    assert len(table.header) == 2 + len(TASK_COLUMNS["detection"])
    assert [row[0] for row in table.rows] == ["clean", "tog_vanishing", "tog_fabrication"]
    clean, vanishing = table.rows[0], table.rows[1]
    assert clean[3].mean == pytest.approx(0.9) and vanishing[3].mean == pytest.approx(0.9 * 0.2)  # mAP@0.5
    assert model_tables(records)[0] == table


def test_segmentation_table_shows_only_the_scores_the_cells_hold():
    metrics = {"clean/jaccard": 0.9, "adv/jaccard": 0.5, "clean/hd95": 2.0, "adv/hd95": 9.0,
               "clean/jaccard_small": 0.8, "adv/jaccard_small": 0.2}
    table = task_table([cell("attack", "lung", "unet", "sea", "8_255", 0, metrics, "segmentation")])
    assert table.header == ("attack", "budget", "Jaccard", "HD95 (px)", "Jaccard small")
    assert [entry.mean for entry in table.rows[0][2:]] == [0.9, 2.0, 0.8]
    assert [entry.mean for entry in table.rows[1][2:]] == [0.5, 9.0, 0.2]
    classification = cell("attack", "fundus", "resnet", "pgd", "8_255", 0, {"adv/accuracy": 0.1}, "classification")
    assert task_table([classification]) is None
