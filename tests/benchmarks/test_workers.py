"""Three `medadv run` processes on one store, as users start them (no --shard): they split the grid, each
cell is computed and stored once, the cell of a worker killed with -9 is taken over, and a worker sent
SIGTERM mid-cell gives its cell back, exits 143 saying how to resume, and leaves the store consistent; and
`medadv run --workers 2`, which starts two such workers, passes SIGTERM on and trains the shared model once.
A gate in the test attack holds every worker inside its first cell until all of them have claimed one."""

from __future__ import annotations

import re
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest

from benchmarks.grid import load_benchmark
from benchmarks.model_cache import checkpoint_path, load_or_train
from benchmarks.store import ResultsStore
from tests.benchmarks.cli_runs import ROOT, medadv, run_env
from tests.benchmarks.fake_cells import WORKERS
from tests.benchmarks.slow_attack import GATE_VARIABLE

pytestmark = pytest.mark.slow
DEADLINE = 300  # seconds for any one step, far above its run time


def wait_until(condition, workers: list[subprocess.Popen], logs: Path, what: str):
    """Poll ``condition()`` until it gives a value; fail, with the workers' logs, if one ends first."""
    deadline = time.monotonic() + DEADLINE
    while time.monotonic() < deadline:
        found = condition()
        if found:
            return found
        if any(worker.poll() is not None for worker in workers):
            tails = "\n".join(path.read_text()[-1500:] for path in sorted(logs.glob("worker*.err")))
            raise AssertionError(f"a worker ended before {what}:\n{tails}")
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting until {what}")


def rows(store_path: Path, query: str) -> list[tuple]:
    """A light read of the store while the workers write it (no schema transaction, as opening one makes)."""
    if not store_path.is_file():
        return []
    connection = sqlite3.connect(store_path, timeout=60)
    try:
        return connection.execute(query).fetchall()
    except sqlite3.OperationalError:  # the first worker is still creating the tables
        return []
    finally:
        connection.close()


def leases_by_pid(store_path: Path) -> dict[int, str]:
    """The cell each worker process holds a lease on, by pid."""
    return {int(worker.split(":")[-2]): key for key, worker in rows(store_path, "SELECT key, worker FROM leases")}


def held_by_all(store_path: Path, pids: set[int]) -> dict[int, str] | None:
    """The cell each worker holds, once every one of ``pids`` holds one."""
    held = leases_by_pid(store_path)
    return held if set(held) == pids else None


def stored_by(store_path: Path, pid: int) -> set[str]:
    """The cells the worker with ``pid`` stored as done."""
    return {key for key, host in rows(store_path, "SELECT key, host FROM cells WHERE status = 'done'")
            if f":{pid}:" in host}


def done_lines(output: str) -> set[str]:
    """The cells a worker reports as computed and stored by itself (its progress lines)."""
    return set(re.findall(r"^\[\d+/\d+\] done .* s  (\S+)$", output, flags=re.MULTILINE))


def test_three_workers_share_the_grid_and_take_over_a_killed_and_a_preempted_worker(tmp_path, capsys):
    benchmark = load_benchmark(WORKERS)
    (spec,) = {spec for cell in benchmark.cells for spec in cell.models}
    cache = checkpoint_path(spec, tmp_path / "models")
    cache.parent.mkdir()
    cache.write_bytes(b"truncated")  # a damaged cache file: moved aside and trained again, once, here
    assert load_or_train(spec, tmp_path / "models").trained and cache.is_file()
    assert len(list(cache.parent.glob(f"{cache.name}.corrupt-*"))) == 1
    assert f"model cache {cache} does not load" in capsys.readouterr().err

    store_path, gate = tmp_path / "results.db", tmp_path / "gate"
    command = medadv("run", "--config", str(WORKERS), "--output", str(tmp_path), "--no-report", "--lease-seconds", "8")
    workers = []
    for index in range(3):
        with (tmp_path / f"worker{index}.out").open("w") as out, (tmp_path / f"worker{index}.err").open("w") as err:
            workers.append(subprocess.Popen(command, cwd=ROOT, env=run_env(**{GATE_VARIABLE: str(gate)}),
                                            stdout=out, stderr=err))
    pids = {worker.pid for worker in workers}
    try:
        held = wait_until(lambda: held_by_all(store_path, pids), workers, tmp_path, "all three workers held a cell")
        assert len(set(held.values())) == 3  # three different cells at once: the work is split
        killed, preempted, finisher = workers
        killed.kill()
        killed.wait()  # reaped: its pid is gone, so its lease is stale at once
        gate.touch()
        survivors = [preempted, finisher]
        wait_until(lambda: preempted.pid in leases_by_pid(store_path) and stored_by(store_path, preempted.pid),
                   survivors, tmp_path, "the second worker stored a cell and held another")
        preempted.send_signal(signal.SIGTERM)
        preempted.wait(DEADLINE)
        finisher.wait(DEADLINE)
    finally:
        gate.touch()
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
                worker.wait()
    logs = [((tmp_path / f"worker{i}.out").read_text(), (tmp_path / f"worker{i}.err").read_text()) for i in range(3)]
    assert preempted.returncode == 143, logs[1][1][-2000:]
    assert "medadv run: stopped by SIGTERM, cell " in logs[1][1]
    assert "run the same command again to resume" in logs[1][1]
    assert finisher.returncode == 0, logs[2][1][-2000:]
    keys = {cell.key for cell in benchmark.cells}
    with ResultsStore(store_path) as store:
        records = {record.key: record for record in store.records(status=None)}
        assert store.leases() == {}
    assert set(records) == keys and {record.status for record in records.values()} == {"done"}
    computed = [done_lines(logs[1][0]), done_lines(logs[2][0])]
    assert stored_by(store_path, killed.pid) == set() and all(computed)  # the survivors split the work
    assert len(computed[0]) + len(computed[1]) == len(keys) and computed[0] | computed[1] == keys  # each once
    assert held[killed.pid] in computed[1]  # the killed worker's cell, taken over
    (abandoned,) = re.findall(r"cell (\S+) abandoned", logs[1][1])
    assert abandoned in computed[1] and abandoned not in computed[0]


def test_the_workers_option_splits_the_grid_trains_once_and_passes_sigterm_on(tmp_path):
    """`medadv run --workers 2`: SIGTERM to it while both workers hold a cell stops both (143, cells given back);
    the same command again finishes the grid, split between two worker processes, with the one model trained
    once (the second worker waited for it), and prints the results and writes the report once."""
    store_path, gate = tmp_path / "results.db", tmp_path / "gate"
    command = medadv("run", "--config", str(WORKERS), "--output", str(tmp_path), "--workers", "2")
    with (tmp_path / "worker-parent.out").open("w") as out, (tmp_path / "worker-parent.err").open("w") as err:
        parent = subprocess.Popen(command, cwd=ROOT, env=run_env(**{GATE_VARIABLE: str(gate)}), stdout=out, stderr=err)
    try:
        def both_held_after_training() -> dict[int, str] | None:
            held = leases_by_pid(store_path)
            return held if len(held) == 2 and list((tmp_path / "models").glob("*.pt")) else None

        held = wait_until(both_held_after_training, [parent], tmp_path,
                          "the model was trained and both workers held a cell")
        parent.send_signal(signal.SIGTERM)
        parent.wait(DEADLINE)
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()
    first_err = (tmp_path / "worker-parent.err").read_text()
    assert parent.returncode == 143, first_err[-2000:]
    assert first_err.count("medadv run: stopped by SIGTERM") == 3  # each worker, then the run that started them
    with ResultsStore(store_path) as store:
        assert store.leases() == {} and not store.records(status="done")
        assert {record.key for record in store.records(status=None)} <= set(held.values())

    gate.touch()
    result = subprocess.run(command, cwd=ROOT, env=run_env(), capture_output=True, text=True, timeout=DEADLINE)
    assert result.returncode == 0, result.stderr[-2000:]
    keys = {cell.key for cell in load_benchmark(WORKERS).cells}
    by_worker = [set(re.findall(rf"^worker {index}/2 \[\d+/\d+\] done .* s  (\S+)$", result.stdout, re.MULTILINE))
                 for index in range(2)]
    assert all(by_worker) and by_worker[0] | by_worker[1] == keys and not by_worker[0] & by_worker[1]
    with ResultsStore(store_path) as store:
        records = store.records(status=None)
    assert {record.key for record in records} == keys and {record.status for record in records} == {"done"}
    assert len({record.host.split(":")[1] for record in records}) == 2  # stored by two processes
    assert len(list((tmp_path / "models" / "logs").glob("*/version_*/metrics.csv"))) == 1  # one training in all
    assert result.stdout.count("Results: workers (6 cells)") == 1 and (tmp_path / "workers" / "report.html").is_file()
