"""`medadv run --workers N` without running anything: each worker's cell order (every cell once, starting on
another model's cells), the threads each worker gets, and the options every worker is started with."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.cli import build_parser, worker_argv
from benchmarks.grid import load_benchmark, resolve_config
from benchmarks.workers import threads_per_worker, worker_command, worker_order


@pytest.fixture(scope="module")
def default_cells():
    return load_benchmark(resolve_config("default")).cells


@pytest.mark.parametrize("count", [1, 2, 3, 4])
def test_every_worker_lists_every_cell_once_in_model_groups(default_cells, count):
    models = list(dict.fromkeys(cell.models for cell in default_cells))
    assert len(models) == 3
    firsts = []
    for index in range(count):
        ordered = worker_order(default_cells, index, count)
        assert sorted(cell.key for cell in ordered) == sorted(cell.key for cell in default_cells)
        runs = [cell.models for position, cell in enumerate(ordered)
                if position == 0 or ordered[position - 1].models != cell.models]
        assert len(runs) == len(models)  # each model's cells back to back
        assert [cell for cell in ordered if cell.models == runs[0]] == [
            cell for cell in default_cells if cell.models == runs[0]]  # in the grid's order within a model
        firsts.append(ordered[0].models)
    assert firsts[0] == models[0]
    assert len(set(firsts)) == min(count, len(models))  # workers start on different models while there are enough


@pytest.mark.parametrize("index, count", [(2, 2), (-1, 2), (0, 0)])
def test_a_worker_outside_its_count_is_refused(default_cells, index, count):
    with pytest.raises(ValueError, match="--worker must be i/n"):
        worker_order(default_cells, index, count)


@pytest.mark.parametrize("count, cores, threads", [(1, 2, 2), (2, 2, 1), (3, 2, 1), (2, 16, 8), (3, 16, 5)])
def test_workers_split_the_cores(count, cores, threads):
    assert threads_per_worker(count, cores) == threads


def test_workers_run_with_every_option_of_the_run(tmp_path):
    parser = build_parser()
    given = ["run", "--config", "smia", "--profile", "real", "--profile", "reduced", "--set", "seeds=[1]",
             "--set", "evaluation.max_batches=2", "--output", str(tmp_path), "--store", str(tmp_path / "s.db"),
             "--shard", "1/3", "--accelerator", "cpu", "--devices", "1", "--num-nodes", "1", "--strategy", "auto",
             "--wandb", "--lease-seconds", "12.5", "--deterministic", "warn", "--workers", "2", "--no-report"]
    parent = parser.parse_args(given)
    command = worker_command(worker_argv(parent), 1, 2)
    assert command[1:3] == ["-m", "benchmarks.cli"]
    worker = parser.parse_args(command[3:])
    assert worker.worker == "1/2" and worker.workers == 1 and not worker.no_report
    differing = {"worker", "workers", "no_report"}
    assert {key: value for key, value in vars(worker).items() if key not in differing} == {
        key: value for key, value in vars(parent).items() if key not in differing}
    assert isinstance(worker.output, Path) and worker.lease_seconds == 12.5
