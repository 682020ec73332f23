"""Runs a benchmark's cells: trains or loads each model, runs ``trainer.test`` with the cell's evaluation
callback, and writes each cell to the results store as it finishes. Finished cells (same key, same
config hash) are skipped, so a killed run resumes where it stopped."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import socket
import sys
import time
import traceback
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.fabric.utilities.rank_zero import rank_zero_only
from lightning.pytorch.loggers import CSVLogger, Logger

from benchmarks.cell_kinds import CELL_KINDS, CellOutput
from benchmarks.grid import Benchmark, Cell, ModelSpec, select_shard
from benchmarks.model_cache import TrainedModel, load_or_train
from benchmarks.progress import CellProgress
from benchmarks.store import CellRecord, ResultsStore, now

DETERMINISM = {None: None, "error": True, "warn": "warn"}  # --deterministic -> Lightning's Trainer(deterministic=)
VERSIONED_PACKAGES = (
    "medadvbench", "torch", "torchvision", "lightning", "torchmetrics", "timm", "segmentation-models-pytorch",
)


@dataclass(frozen=True)
class RunOptions:
    """Where results go and how each cell's trainer runs (Lightning's accelerator/devices/nodes/strategy).
    ``deterministic``: None, ``"error"`` (an operation without a deterministic implementation raises) or
    ``"warn"`` (it warns), as ``torch.use_deterministic_algorithms`` and Lightning's ``deterministic``."""

    output: Path = Path("runs")
    store: Path | None = None
    accelerator: str = "auto"
    devices: int | str = 1
    num_nodes: int = 1
    strategy: str = "auto"
    shard: tuple[int, int] = (0, 1)
    wandb: bool = False
    progress: bool = True
    deterministic: str | None = None

    def __post_init__(self) -> None:
        if self.deterministic not in DETERMINISM:
            raise ValueError(f"deterministic must be one of {list(DETERMINISM)}, got {self.deterministic!r}")

    @property
    def store_path(self) -> Path:
        return self.store or self.output / "results.db"

    @property
    def trainer_settings(self) -> dict[str, Any]:
        settings = {
            "accelerator": self.accelerator,
            "devices": self.devices,
            "num_nodes": self.num_nodes,
            "strategy": self.strategy,
        }
        return settings | ({"deterministic": DETERMINISM[self.deterministic]} if self.deterministic else {})


@dataclass
class RunSummary:
    """How many cells of the shard were skipped (already done), run, and failed; seconds spent."""

    cells: int
    skipped: int
    done: int = 0
    failed: list[str] = field(default_factory=list)
    seconds: float = 0.0


def versions() -> dict[str, str]:
    """Versions of Python and the packages a result depends on, stored with every cell."""
    found = {"python": platform.python_version()}
    for package in VERSIONED_PACKAGES:
        try:
            found[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            continue
    return found


def cell_record(cell: Cell, status: str, **values: Any) -> CellRecord:
    return CellRecord(
        key=cell.key, benchmark=cell.benchmark, config_hash=cell.config_hash, kind=cell.kind,
        dataset=cell.dataset, model=cell.model, attack=cell.attack, budget=cell.budget_label, seed=cell.seed,
        status=status, settings=cell.settings(), **values,
    )


def use_deterministic_algorithms(warn_only: bool) -> None:
    """Deterministic kernels for everything that follows (training, evaluation, attacks), as Lightning's
    ``Trainer(deterministic=True)`` sets them, but from the start of the run: cuDNN autotuning off and
    cuBLAS's fixed workspace (CUDA needs it for reproducible matrix products)."""
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True, warn_only=warn_only)
    torch.backends.cudnn.benchmark = False


def multi_process() -> bool:
    """Whether this process is one of several ranks (an initialised process group, or WORLD_SIZE > 1 as
    torchrun and Lightning's launcher set it)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_world_size() > 1
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def pending_cells(benchmark: Benchmark, finished: Mapping[str, str], shard: tuple[int, int]) -> tuple[list[Cell], int]:
    """The shard's cells not done (``finished``: key -> config hash of the done cells) under their current
    config hash, and how many the shard has."""
    cells = select_shard(benchmark.cells, *shard)
    return [cell for cell in cells if finished.get(cell.key) != cell.config_hash], len(cells)


class BenchmarkRunner:
    """Runs the pending cells of one benchmark shard; rank 0 writes the store under DDP."""

    def __init__(self, benchmark: Benchmark, options: RunOptions) -> None:
        self.benchmark = benchmark
        self.options = options
        self.models: dict[ModelSpec, TrainedModel] = {}
        self.versions = versions()
        self.host = f"{socket.gethostname()} shard {options.shard[0]}/{options.shard[1]}"

    def run(self) -> RunSummary:
        start = time.perf_counter()
        if self.options.deterministic:
            use_deterministic_algorithms(warn_only=self.options.deterministic == "warn")
        with ResultsStore(self.options.store_path) as store:
            pending, total = pending_cells(self.benchmark, store.finished(), self.options.shard)
            summary = RunSummary(cells=total, skipped=total - len(pending))
            progress = CellProgress(total, summary.skipped, enabled=self.options.progress and self.writer)
            with progress:
                for cell in pending:
                    progress.started(cell.key)
                    record = self.run_cell(cell, store)
                    progress.finished(cell.key, record.status, record.seconds or 0.0)
                    if record.status == "done":
                        summary.done += 1
                    else:
                        summary.failed.append(f"{cell.key}: {record.error.strip().splitlines()[-1]}")
        summary.seconds = time.perf_counter() - start
        return summary

    @property
    def writer(self) -> bool:
        return rank_zero_only.rank == 0

    def run_cell(self, cell: Cell, store: ResultsStore) -> CellRecord:
        """Evaluate one cell and store it as done, or as failed with the error; one process goes on.

        In a multi-process run a failing rank also stores the failure, then stops the job: the other
        ranks may be waiting for it in a collective operation, and Lightning's launcher, torchrun or
        ``srun --kill-on-bad-exit`` end them when one rank exits with an error."""
        running = cell_record(cell, "running", versions=self.versions, host=self.host, started_at=now())
        if self.writer:
            store.start(running)
        output = CellOutput({})
        start = time.perf_counter()
        try:
            trained = [self.trained(spec) for spec in cell.models]
            start = time.perf_counter()  # a cell's seconds are its evaluation's, not its models' training
            output = self.evaluate(cell, trained)
            task = getattr(trained[0].module, "task", "unknown")
            record = replace(running, status="done", metrics=output.metrics, settings=running.settings | {"task": task})
        except Exception:  # a failing cell is stored with its traceback; the other cells still run
            record = replace(running, status="failed", error=f"rank {rank_zero_only.rank}: {traceback.format_exc()}")
            print(f"cell {cell.key} failed on {record.error}", file=sys.stderr)
        record = replace(record, seconds=time.perf_counter() - start, finished_at=now())
        stop = record.status == "failed" and multi_process()
        if self.writer or stop:
            store.finish(record, output.examples, output.samples)
        if stop:
            raise SystemExit(f"rank {rank_zero_only.rank}: stopping the multi-process run after {cell.key} failed; "
                             "run the same command again to redo it and the cells after it")
        return record

    def trained(self, spec: ModelSpec) -> TrainedModel:
        if spec not in self.models:
            settings = self.options.trainer_settings
            self.models[spec] = load_or_train(
                spec, self.options.output / "models", [f"--trainer.{key}={value}" for key, value in settings.items()]
            )
        return self.models[spec]

    def evaluate(self, cell: Cell, trained: Sequence[TrainedModel]) -> CellOutput:
        """Run the cell's callback inside ``trainer.test`` of its first model and read its results."""
        models = {item.spec.label: item.module for item in trained}
        kind = CELL_KINDS[cell.kind]
        callback = kind.callback(cell, models)
        pl.seed_everything(cell.seed, workers=True, verbose=False)
        with self.loggers(cell, trained[0]) as loggers:
            trainer = pl.Trainer(
                **self.options.trainer_settings,
                logger=loggers,
                callbacks=[callback],
                limit_test_batches=cell.evaluation.get("max_batches") or 1.0,  # clean and attacked alike
                enable_checkpointing=False,
                enable_progress_bar=False,
                enable_model_summary=False,
            )
            trainer.test(trained[0].module, datamodule=trained[0].datamodule, verbose=False)
        return kind.results(cell, callback)

    @contextmanager
    def loggers(self, cell: Cell, trained: TrainedModel) -> Iterator[Sequence[Logger]]:
        """A CSVLogger per cell, plus a W&B run (group = benchmark, name = cell key) when asked for."""
        version = cell.key.removeprefix(f"{cell.benchmark}/").replace("/", "-")
        csv = CSVLogger(self.options.output / "logs", name=cell.benchmark, version=version)
        if not self.options.wandb:
            yield [csv]
            return
        import wandb

        from callbacks.wandb_logging import make_wandb_logger

        config = {"benchmark": cell.benchmark, "dataset": cell.dataset, "model_label": cell.model,
                  "attack": cell.attack, "budget": cell.budget_label, "seed": cell.seed, "kind": cell.kind,
                  "cell": cell.settings()}
        logger = make_wandb_logger(
            trained.module, trained.datamodule, [cell.attack], save_dir=self.options.output,
            group=cell.benchmark, config=config, name=cell.key,
        )
        try:
            yield [csv, logger]
        finally:
            wandb.finish()
