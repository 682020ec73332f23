"""A BenchmarkRunner on the workers grid whose models and evaluations are stand-ins, for in-process tests of
what the runner does around a cell (leases, SIGTERM, out-of-memory retries, non-finite metrics)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

from benchmarks.cell_kinds import CellOutput
from benchmarks.grid import Cell, ModelSpec, load_benchmark
from benchmarks.model_cache import TrainedModel
from benchmarks.runner import BenchmarkRunner, RunOptions

WORKERS = Path(__file__).parent / "configs" / "workers.yaml"
Evaluate = Callable[[Cell, int | None, int | None], CellOutput]  # cell, batch size, max batches -> output


def fake_runner(output: Path, evaluate: Evaluate, batch_size: int = 8, **options: object) -> BenchmarkRunner:
    """A runner of the workers grid (CPU, no progress display) that trains nothing and evaluates each cell
    with ``evaluate``, which sees the datamodule's batch size at the time and the batch limit."""
    runner = BenchmarkRunner(load_benchmark(WORKERS), RunOptions(output=output, accelerator="cpu", progress=False,
                                                                 **options))
    datamodule = SimpleNamespace(batch_size=batch_size)
    module = SimpleNamespace(task="classification")

    def trained(spec: ModelSpec) -> TrainedModel:
        return TrainedModel(spec, module, datamodule, output / "model.pt", trained=False)

    runner.trained = trained
    runner.evaluate = lambda cell, models, max_batches=None: evaluate(cell, datamodule.batch_size, max_batches)
    return runner


def accuracy(value: float = 0.5) -> CellOutput:
    return CellOutput({"clean/accuracy": 0.75, "adv/accuracy": value})
