"""The fragility suite's config and its view: accuracy by input size and network as a table and figures, and
as a section of the report."""

from __future__ import annotations

import functools
from dataclasses import replace
from pathlib import Path

import pytest

from benchmarks.fragility_figures import (
    Variant,
    fragility_blocks,
    fragility_points,
    fragility_table,
    parameter_count,
    variant_of,
)
from benchmarks.grid import load_benchmark, resolve_config
from benchmarks.report import write_report
from benchmarks.runner import cell_record
from benchmarks.store import CellRecord, ResultsStore
from benchmarks.validation import validate_benchmark
from tests.benchmarks.report_store import fundus_cells
from tests.realdata import require_shared

SIZES, NETWORKS, FAMILIES = (28, 64, 128), ("small_cnn", "resnet18", "resnet50"), ("pneumoniamnist", "retinamnist")
STRENGTH = {"fgsm": 0.1, "bim": 0.3, "pgd": 0.2, "autoattack": 0.35}


def accuracy(variant: Variant, attack: str | None) -> float:
    """A made-up accuracy that falls with the attack's strength, the input size and the network's depth."""
    if attack is None:
        return 0.9
    return 0.9 - STRENGTH[attack] * (SIZES.index(variant.size) + NETWORKS.index(variant.network) + 1) / 5


@functools.cache
def suite_records(profiles: tuple[str, ...]) -> tuple[CellRecord, ...]:
    """Every cell of the shipped suite as the runner would store it done, with :func:`accuracy` as metrics."""
    records = []
    for cell in load_benchmark(resolve_config("fragility"), list(profiles)).cells:
        record = cell_record(cell, "done")
        variant = variant_of(replace(record, settings=record.settings | {"task": "classification"}))
        assert variant is not None, f"{cell.key}: the config does not set the input size and the network"
        metrics = {"clean/accuracy": accuracy(variant, None), "adv/accuracy": accuracy(variant, cell.attack)}
        records.append(replace(record, metrics=metrics, settings=record.settings | {"task": "classification"}))
    return tuple(records)


@pytest.mark.parametrize("profiles", [(), ("reduced",)])
def test_suite_covers_every_size_network_and_data_set_with_the_same_attacks(profiles):
    points = fragility_points(suite_records(profiles))
    assert "1_255" in points
    grid = {Variant(f, n, s) for f in FAMILIES for n in NETWORKS for s in SIZES}
    for budget_points in points.values():
        variants = {p.variant for p in budget_points}
        assert variants == grid if not profiles else variants < grid
        for family in FAMILIES:  # the reduced grid still varies both axes on both data sets
            assert len({v.size for v in variants if v.family == family}) >= 2
            assert len({v.network for v in variants if v.family == family}) >= 2
        assert len({tuple(p.attacked) for p in budget_points}) == 1  # every variant faces the same attacks
    attacks = set(points["1_255"][0].attacked)
    assert attacks == ({"fgsm", "bim", "pgd"} if profiles else {"fgsm", "bim", "pgd", "autoattack"})
    assert len(points) == (1 if profiles else 4)  # budgets: 1/255 (reduced), 1/255 to 8/255


def test_reduced_profile_validates_on_the_real_data():
    require_shared("medmnist/pneumoniamnist.npz")
    require_shared("medmnist/retinamnist.npz")
    if not Path("../shared/data").is_dir():
        pytest.skip("the suite reads ../shared/data relative to the repository root")
    kept = ("pneumonia_128", "retina_64")  # both files, both upsampled sizes; the rest differ only in size
    dropped = [f"datasets.{name}=null" for name in ("pneumonia_28", "pneumonia_64", "retina_28", "retina_128")]
    benchmark = validate_benchmark(resolve_config("fragility"), ["reduced"], dropped)
    assert {cell.dataset for cell in benchmark.cells} == set(kept)


def test_table_orders_by_parameters_and_size_and_names_the_strongest_attack():
    table = fragility_table("1_255", fragility_points(suite_records(()))["1_255"])
    first = [("pneumoniamnist", "small_cnn")] * 3 + [("pneumoniamnist", "resnet18")]
    assert [row[:2] for row in table.rows[:4]] == first
    assert [row[3] for row in table.rows[:3]] == ["28 px", "64 px", "128 px"]
    assert parameter_count("small_cnn") < parameter_count("resnet18") < parameter_count("resnet50")
    lowest, by = table.header.index("lowest"), table.header.index("by")
    attacks = table.header[table.header.index("clean") + 1:lowest]
    assert set(attacks) == set(STRENGTH)
    for row in table.rows:
        attacked = [row[table.header.index(a)].mean for a in attacks]
        assert row[lowest].mean == min(attacked) and row[by] == max(STRENGTH, key=STRENGTH.get)


def test_benchmarks_without_the_axes_have_no_fragility_view():
    assert fragility_blocks(fundus_cells(0)) == []
    one_size = [r for r in suite_records(("reduced",)) if r.dataset == "pneumonia_28" and r.model == "resnet18"]
    assert fragility_blocks(one_size) == []  # one variant per train config: nothing to compare


def test_report_opens_with_the_fragility_section(tmp_path):
    store = ResultsStore(tmp_path / "results.db")
    two_sizes = [r for r in suite_records(("reduced",)) if r.model == "small_cnn" and r.attack == "bim"
                 and r.dataset in {"pneumonia_28", "pneumonia_64"}]
    for record in two_sizes:
        store.start(record)
        store.finish(record)
    html_path, _ = write_report(store, "fragility", tmp_path / "report")
    html = html_path.read_text()
    assert html.index("Fragility: input size and model size") < html.index("pneumonia_28")
    assert "Fragility at 1/255: accuracy by input size and network" in html
    assert "pneumoniamnist: accuracy at 1/255 by input size and model size" in html
