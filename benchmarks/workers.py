"""Several `medadv run` workers on one machine (`medadv run --workers N`): N processes on one store, each with its
share of the CPU threads, split the grid through the store's leases (``benchmarks.leases``). Small models use
two CPU threads poorly (measured on 2 cores: 1.2-1.3x one thread for the default models' training), so two
one-thread workers get through a grid much faster than one two-thread run. Each worker starts on another
model's cells (:func:`worker_order`), so the models train side by side; a model is trained by one worker
while another that needs it waits for the cache file (``load_or_train(exclusive=True)``)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from types import FrameType

from benchmarks.grid import Cell


def worker_order(cells: Sequence[Cell], index: int, count: int) -> list[Cell]:
    """``cells`` grouped by the models they evaluate (groups in order of first appearance), the groups rotated
    so that worker ``index`` of ``count`` starts at group ``index * groups // count``: workers start on
    different models and every worker still lists every cell."""
    if count < 1 or not 0 <= index < count:
        raise ValueError(f"--worker must be i/n with 0 <= i < n, got {index}/{count}")
    groups: dict[tuple, list[Cell]] = {}
    for cell in cells:
        groups.setdefault(cell.models, []).append(cell)
    ordered = list(groups.values())
    first = index * len(ordered) // count
    return [cell for group in ordered[first:] + ordered[:first] for cell in group]


def threads_per_worker(count: int, cores: int | None = None) -> int:
    """The CPU threads each of ``count`` workers gets: the machine's cores split evenly, at least one."""
    return max(1, (cores or os.cpu_count() or 1) // count)


def run_workers(commands: Sequence[Sequence[str]], threads: int) -> tuple[list[int], bool]:
    """Run the worker ``commands`` at once, each with ``threads`` OpenMP threads (unless OMP_NUM_THREADS is set),
    their output going to this process's; SIGTERM or SIGINT to this process is passed on to every worker as
    SIGTERM, which gives its cell back and exits (``benchmarks.preemption``). The exit codes of the workers
    started, in order, and whether a signal stopped them."""
    env = os.environ | {"OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", str(threads))}
    workers: list[subprocess.Popen] = []
    stopping: list[int] = []

    def pass_on(signum: int, frame: FrameType | None) -> None:
        stopping.append(signum)
        for worker in workers:
            if worker.poll() is None:
                worker.send_signal(signal.SIGTERM)

    with signals_passed_on(pass_on):
        for command in commands:
            if not stopping:  # a worker not started yet when the signal came is not started at all
                workers.append(subprocess.Popen(list(command), env=env))
        return [worker.wait() for worker in workers], bool(stopping)


@contextmanager
def signals_passed_on(handler: Callable[[int, FrameType | None], None]) -> Iterator[None]:
    """``handler`` for SIGTERM and SIGINT within the block, the previous handlers put back afterwards."""
    previous = {signum: signal.signal(signum, handler) for signum in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for signum, old in previous.items():
            signal.signal(signum, old)


def worker_command(argv: Sequence[str], index: int, count: int) -> list[str]:
    """The command of worker ``index`` of ``count``: this Python running `medadv` with ``argv`` (the run's
    own options) and ``--worker index/count``."""
    return [sys.executable, "-m", "benchmarks.cli", *argv, "--worker", f"{index}/{count}"]
