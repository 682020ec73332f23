"""Runs a benchmark's cells: trains or loads each model, runs ``trainer.test`` with the cell's evaluation
callback, and writes each cell to the results store as it finishes. Finished cells (same key, same
config hash) are skipped, so a killed run resumes where it stopped. A one-process run claims each cell with
a lease first, so several runs on one store split the grid (``benchmarks.leases``); SIGTERM abandons the
cell in progress (``benchmarks.preemption``); a CUDA out-of-memory error retries the cell with half the
batch size; a cell with non-finite metrics is stored as failed."""

from __future__ import annotations

import importlib.metadata
import math
import os
import platform
import sys
import time
import traceback
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.fabric.utilities.rank_zero import rank_zero_only
from lightning.pytorch.loggers import CSVLogger, Logger
from lightning.pytorch.utilities.exceptions import SIGTERMException

from benchmarks.cell_kinds import CELL_KINDS, CellOutput
from benchmarks.finite_metrics import check_finite
from benchmarks.grid import Benchmark, Cell, ModelSpec, select_shard
from benchmarks.hardware import world_size
from benchmarks.leases import (
    DEFAULT_LEASE_SECONDS,
    HEARTBEATS_PER_LEASE,
    Heartbeat,
    check_lease_seconds,
    stale,
    worker_name,
)
from benchmarks.model_cache import TrainedModel, load_or_train
from benchmarks.preemption import Preemption, leave_process_group
from benchmarks.progress import CellProgress
from benchmarks.store import CellRecord, ResultsStore, now
from benchmarks.workers import worker_order
from callbacks.analysis import CleanViews
from callbacks.batch_size import halving_on_oom

Claimed = Iterator[tuple[Cell, CellRecord]]  # cells to run, each with its running record
MAX_POLL_SECONDS = 5.0  # how often a worker with nothing to claim looks again at cells other workers hold
DETERMINISM = {None: None, "error": True, "warn": "warn"}  # --deterministic -> Lightning's Trainer(deterministic=)
VERSIONED_PACKAGES = (
    "medadvbench", "torch", "torchvision", "lightning", "torchmetrics", "timm", "segmentation-models-pytorch",
)


@dataclass(frozen=True)
class RunOptions:
    """Where results go and how each cell's trainer runs (Lightning's accelerator/devices/nodes/strategy).
    ``deterministic``: None, ``"error"`` (an operation without a deterministic implementation raises) or
    ``"warn"`` (it warns), as ``torch.use_deterministic_algorithms`` and Lightning's ``deterministic``.
    ``lease_seconds``: how long a claimed cell stays another worker's without a heartbeat;
    ``min_batch_size``: the floor of the batch-size halving after CUDA out-of-memory errors; ``worker``: this
    run is worker i of n started by `medadv run --workers n` (it starts on other models' cells,
    ``benchmarks.workers.worker_order``)."""

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
    lease_seconds: float = DEFAULT_LEASE_SECONDS
    min_batch_size: int = 1
    worker: tuple[int, int] = (0, 1)

    def __post_init__(self) -> None:
        if self.deterministic not in DETERMINISM:
            raise ValueError(f"deterministic must be one of {list(DETERMINISM)}, got {self.deterministic!r}")
        check_lease_seconds(self.lease_seconds)
        if isinstance(self.min_batch_size, bool) or not isinstance(self.min_batch_size, int) or self.min_batch_size < 1:
            raise ValueError(f"min_batch_size must be an integer >= 1, got {self.min_batch_size!r}")

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
    """How many cells of the shard were skipped (already done), run, failed, and finished by other workers
    on the store; seconds spent; ``preempted``: the run stopped on SIGTERM (``abandoned``: the cell it was in).
    """

    cells: int
    skipped: int
    done: int = 0
    failed: list[str] = field(default_factory=list)
    elsewhere: int = 0
    seconds: float = 0.0
    preempted: bool = False
    abandoned: str | None = None


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
        self.worker = worker_name()
        self.host = f"{self.worker} shard {options.shard[0]}/{options.shard[1]}"
        self.preemption = Preemption()
        self.clean_views: dict[tuple, CleanViews] = {}  # analysis views of a model on its first test batch

    def run(self) -> RunSummary:
        """Run the shard's pending cells; on SIGTERM stop with the store consistent (``summary.preempted``)."""
        start = time.perf_counter()
        leased = self.leased
        if self.options.deterministic:
            use_deterministic_algorithms(warn_only=self.options.deterministic == "warn")
        with ResultsStore(self.options.store_path) as store, self.preemption.installed():
            pending, total = pending_cells(self.benchmark, store.finished(), self.options.shard)
            summary = RunSummary(cells=total, skipped=total - len(pending))
            index, count = self.options.worker
            progress = CellProgress(total, summary.skipped, enabled=self.options.progress and self.writer,
                                    label=f"worker {index}/{count} " if count > 1 else "")
            heartbeat = Heartbeat(store.path, self.worker, self.options.lease_seconds) if leased else nullcontext()
            with progress, heartbeat:
                try:
                    ordered = worker_order(pending, index, count) if count > 1 else pending
                    for cell, running in (self.claimed if leased else self.started)(ordered, store, summary):
                        summary.abandoned = cell.key
                        progress.started(cell.key)
                        record = self.run_cell(cell, running, store)
                        summary.abandoned = None
                        progress.finished(cell.key, record.status, record.seconds or 0.0)
                        if record.status == "done":
                            summary.done += 1
                        else:
                            summary.failed.append(f"{cell.key}: {record.error.strip().splitlines()[-1]}")
                        self.preemption.check()  # a SIGTERM that came while the cell was being stored
                except SIGTERMException:  # ours at once, or Lightning's between batches
                    summary.preempted = True
                    with self.preemption.shielded():  # a second SIGTERM does not cut the clean-up short
                        if summary.abandoned and self.writer:
                            store.release(summary.abandoned, self.worker)
                        leave_process_group()  # peers waiting for this rank in a collective operation fail at once
        summary.seconds = time.perf_counter() - start
        return summary

    def running(self, cell: Cell) -> CellRecord:
        return cell_record(cell, "running", versions=self.versions, host=self.host, started_at=now())

    def started(self, cells: Sequence[Cell], store: ResultsStore, _: RunSummary) -> Claimed:
        """The cells in order, each recorded as running by the writing rank (a multi-process run: its ranks
        must run the same cells, so it takes no leases and skips nothing another worker holds)."""
        for cell in cells:
            running = self.running(cell)
            if self.writer:
                store.start(running)
            yield cell, running

    def claimed(self, cells: Sequence[Cell], store: ResultsStore, summary: RunSummary) -> Claimed:
        """The cells this worker claims, one at a time: those another worker holds are tried again (every
        ``lease_seconds / 4``, at most 5 s) until they are finished or their lease has lapsed; those another
        worker finished (done, or failed in this round) count in ``summary.elsewhere``."""
        since = now()
        poll = min(self.options.lease_seconds / HEARTBEATS_PER_LEASE, MAX_POLL_SECONDS)
        waiting = list(cells)
        while waiting:
            held = []
            for cell in waiting:
                running = self.running(cell)
                outcome = store.claim(running, self.worker, self.options.lease_seconds, since, stale)
                if outcome == "claimed":
                    yield cell, running
                elif outcome == "held":
                    held.append(cell)
                else:
                    summary.elsewhere += 1
            waiting = held
            if waiting:
                time.sleep(poll)

    @property
    def writer(self) -> bool:
        return rank_zero_only.rank == 0

    @property
    def leased(self) -> bool:
        """Whether this run takes leases: a one-process run, which may share the store with other workers."""
        return world_size(self.options.trainer_settings) == 1 and not multi_process()

    def run_cell(self, cell: Cell, running: CellRecord, store: ResultsStore) -> CellRecord:
        """Evaluate one cell (recorded as ``running``) and store it as done, or as failed with the error; one
        process goes on. SIGTERM (a ``SystemExit``) goes through to :meth:`run`, except while the cell is
        being stored.

        In a multi-process run a failing rank also stores the failure, then stops the job: the other
        ranks may be waiting for it in a collective operation, and Lightning's launcher, torchrun or
        ``srun --kill-on-bad-exit`` end them when one rank exits with an error."""
        output = CellOutput({})
        start = time.perf_counter()
        try:
            trained = [self.trained(spec) for spec in cell.models]
            start = time.perf_counter()  # a cell's seconds are its evaluation's, not its models' training
            output, batch_size = self.evaluate_fitting(cell, trained)
            check_finite(output.metrics)
            settings = {"task": getattr(trained[0].module, "task", "unknown")}
            settings |= {"test_batch_size": batch_size} if batch_size else {}
            trained_with = {item.spec.label: item.batch_size for item in trained if item.batch_size}
            settings |= {"train_batch_size": trained_with} if trained_with else {}
            record = replace(running, status="done", metrics=output.metrics, settings=running.settings | settings)
        except Exception:  # a failing cell is stored with its traceback; the other cells still run
            self.preemption.check()  # unless SIGTERM came first (a peer rank stopped): then it is abandoned
            record = replace(running, status="failed", error=f"rank {rank_zero_only.rank}: {traceback.format_exc()}")
            print(f"cell {cell.key} failed on {record.error}", file=sys.stderr)
        record = replace(record, seconds=time.perf_counter() - start, finished_at=now())
        stop = record.status == "failed" and multi_process()
        if self.writer or stop:
            with self.preemption.shielded():
                store.finish(record, output.examples, output.samples, output.arrays)
        if stop:
            raise SystemExit(f"rank {rank_zero_only.rank}: stopping the multi-process run after {cell.key} failed; "
                             "run the same command again to redo it and the cells after it")
        return record

    def trained(self, spec: ModelSpec) -> TrainedModel:
        if spec not in self.models:
            settings = self.options.trainer_settings
            self.models[spec] = load_or_train(
                spec, self.options.output / "models", [f"--trainer.{key}={value}" for key, value in settings.items()],
                callbacks=[self.preemption], exclusive=self.leased,  # another worker may be training it
            )
        return self.models[spec]

    def evaluate_fitting(self, cell: Cell, trained: Sequence[TrainedModel]) -> tuple[CellOutput, int | None]:
        """:meth:`evaluate`, again with half the test batch size after each CUDA out-of-memory error, down to
        ``min_batch_size``, and as many more batches as keep ``max_batches`` worth of images; the results and
        the batch size used (None: a datamodule without ``batch_size``, run as it is)."""
        datamodule = trained[0].datamodule
        requested = getattr(datamodule, "batch_size", None)
        max_batches = cell.evaluation.get("max_batches")
        if not isinstance(requested, int):
            return self.evaluate(cell, trained, max_batches), None

        def attempt(size: int) -> CellOutput:
            datamodule.batch_size = size
            return self.evaluate(cell, trained, max_batches and math.ceil(max_batches * requested / size))

        def retried(size: int, smaller: int) -> None:
            print(f"cell {cell.key}: CUDA out of memory at batch size {size}; retrying with {smaller}", file=sys.stderr)

        try:
            return halving_on_oom(attempt, requested, min(self.options.min_batch_size, requested), retried)
        finally:
            datamodule.batch_size = requested  # the model (and its datamodule) serve later cells too

    def evaluate(self, cell: Cell, trained: Sequence[TrainedModel], max_batches: int | None = None) -> CellOutput:
        """Run the cell's callback inside ``trainer.test`` of its first model and read its results, over at
        most ``max_batches`` test batches (None: all)."""
        models = {item.spec.label: item.module for item in trained}
        kind = CELL_KINDS[cell.kind]
        callback = kind.callback(cell, models)
        analysis = getattr(callback, "analysis", None)
        views_key = (cell.models, cell.seed, repr(cell.evaluation.get("analysis")),
                     getattr(trained[0].datamodule, "batch_size", None))
        if analysis is not None:  # the landscape, clean maps and features depend on the model, not the attack
            analysis.reuse(self.clean_views.get(views_key))
        pl.seed_everything(cell.seed, workers=True, verbose=False)
        with self.loggers(cell, trained[0]) as loggers:
            trainer = pl.Trainer(
                **self.options.trainer_settings,
                logger=loggers,
                callbacks=[callback, self.preemption],
                limit_test_batches=max_batches or 1.0,  # clean and attacked alike
                enable_checkpointing=False,
                enable_progress_bar=False,
                enable_model_summary=False,
            )
            trainer.test(trained[0].module, datamodule=trained[0].datamodule, verbose=False)
        if analysis is not None and analysis.clean is not None:
            self.clean_views[views_key] = analysis.clean
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
