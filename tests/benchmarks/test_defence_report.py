"""The defences view of the report: strongest non-adaptive vs adaptive attack per defence, the trade-off
plot, and nothing for benchmarks without adaptive cells."""

from __future__ import annotations

import pytest

from benchmarks.defence_report import adaptive, defence_blocks, defence_rows
from benchmarks.figures import Image
from benchmarks.store import CellRecord
from benchmarks.tables import Table


def cell(model: str, attack: str, robust: float, method: str | None = None, clean: float = 0.9) -> CellRecord:
    settings = {"steps": 10} | ({"adaptive": method} if method else {})
    metrics = {"clean/accuracy": clean, "clean/accuracy_ci_low": clean - 0.05, "clean/accuracy_ci_high": clean + 0.05,
               "adv/accuracy": robust, "adv/accuracy_ci_low": robust - 0.05, "adv/accuracy_ci_high": robust + 0.05}
    return CellRecord(
        key=f"b/d/{model}/{attack}/4_255/seed0", benchmark="b", config_hash="h", kind="attack", dataset="d",
        model=model, attack=attack, budget="4_255", seed=0, status="done", metrics=metrics,
        settings={"task": "classification", "attacks": [{"label": attack, "settings": settings}]},
    )


RECORDS = [
    cell("undefended", "pgd", 0.2), cell("undefended", "apgd", 0.15),
    cell("jpeg", "pgd", 0.8), cell("jpeg", "apgd", 0.85), cell("jpeg", "pgd-bpda", 0.25, "bpda"),
    cell("noise", "pgd", 0.6), cell("noise", "pgd-eot", 0.3, "eot"), cell("noise", "pgd-eot-few", 0.4, "eot"),
]


def test_each_defence_gets_its_strongest_attack_of_each_kind():
    rows = {row.defence: row for row in defence_rows(RECORDS, "accuracy")}
    assert list(rows) == ["undefended", "jpeg", "noise"]
    assert rows["undefended"].strongest["non-adaptive"][0] == "apgd" and "adaptive" not in rows["undefended"].strongest
    assert rows["jpeg"].strongest["non-adaptive"][0] == "pgd" and rows["jpeg"].strongest["adaptive"][0] == "pgd-bpda"
    assert rows["noise"].strongest["adaptive"][1].mean == pytest.approx(0.3)
    assert rows["jpeg"].robust().mean == pytest.approx(0.25)
    assert rows["jpeg"].clean.interval == pytest.approx((0.85, 0.95))
    assert adaptive(RECORDS[4]) and not adaptive(RECORDS[3])


def test_the_report_blocks_are_the_table_and_the_tradeoff_plot():
    table, plot = defence_blocks(RECORDS)
    assert isinstance(table, Table) and isinstance(plot, Image) and plot.png.startswith(b"\x89PNG")
    assert "non-adaptive vs adaptive" in table.title and "4/255" in table.title
    jpeg = next(row for row in table.rows if row[0] == "jpeg")
    assert jpeg[2] == "pgd" and jpeg[4] == "pgd-bpda"
    assert defence_blocks([record for record in RECORDS if not adaptive(record)]) == []
