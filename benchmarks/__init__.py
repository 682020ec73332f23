"""Benchmark jobs (``medadv run``): config grids, the runner, the results store and the report.

From Python: ``load_benchmark(resolve_config("default"))``, ``BenchmarkRunner(benchmark, RunOptions()).run()``,
``write_report(ResultsStore(path), name, folder)``. Names are imported on first use, so ``medadv --help`` stays
fast.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "Benchmark": "benchmarks.grid",
    "Cell": "benchmarks.grid",
    "load_benchmark": "benchmarks.grid",
    "resolve_config": "benchmarks.grid",
    "ConfigError": "benchmarks.problems",
    "validate_benchmark": "benchmarks.validation",
    "BenchmarkRunner": "benchmarks.runner",
    "RunOptions": "benchmarks.runner",
    "RunSummary": "benchmarks.runner",
    "CellRecord": "benchmarks.store",
    "ResultsStore": "benchmarks.store",
    "write_report": "benchmarks.report",
    "train_from_config": "benchmarks.training",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'benchmarks' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
