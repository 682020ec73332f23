"""SIGTERM to every process of a 2-process DDP run (`--devices 2`, gloo on CPU), as SLURM sends it to every
task: the run exits 143 saying how to resume, the cell in progress is not stored, the store keeps no running
row, and the same command run again does exactly the remaining cells. The in-process tests are in
test_preemption.py."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest

from benchmarks.grid import load_benchmark
from benchmarks.model_cache import load_or_train
from benchmarks.store import ResultsStore
from tests.benchmarks.cli_runs import ROOT, medadv, run_env
from tests.benchmarks.fake_cells import WORKERS
from tests.benchmarks.test_workers import rows

pytestmark = pytest.mark.slow
DEADLINE = 240  # seconds for any one step, far above its run time
DDP = ("--accelerator", "cpu", "--devices", "2", "--strategy", "ddp")


def wait_for(condition, process: subprocess.Popen, log: Path, what: str):
    """Poll ``condition()`` until it gives a value; fail if ``process`` ends first or the deadline passes."""
    deadline = time.monotonic() + DEADLINE
    while time.monotonic() < deadline:
        found = condition()
        if found:
            return found
        assert process.poll() is None, f"the run ended before {what}: {log.read_text()[-3000:]}"
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting until {what}")


def group_gone(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return True
    return False


def statuses(store_path: Path) -> dict[str, str]:
    return dict(rows(store_path, "SELECT key, status FROM cells"))


def a_later_cell_running(store_path: Path) -> bool:
    found = statuses(store_path)
    return "done" in found.values() and "running" in found.values()


def test_sigterm_to_every_rank_stops_a_ddp_run_consistently_and_a_rerun_does_the_rest(tmp_path):
    benchmark = load_benchmark(WORKERS)
    (spec,) = {spec for cell in benchmark.cells for spec in cell.models}
    load_or_train(spec, tmp_path / "models", ["--trainer.accelerator=cpu"])  # cached: the ranks only evaluate
    store_path = tmp_path / "results.db"
    command = medadv("run", "--config", str(WORKERS), "--output", str(tmp_path), "--no-report", *DDP)
    log = tmp_path / "run.err"
    with log.open("w") as err:  # a file, not a pipe: both ranks write to it and nothing waits on a full pipe
        process = subprocess.Popen(command, cwd=ROOT, env=run_env(), stdout=subprocess.DEVNULL, stderr=err,
                                   start_new_session=True)  # its own process group, rank 1 included
    try:
        wait_for(lambda: a_later_cell_running(store_path), process, log, "a cell was done and another running")
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(DEADLINE)
        deadline = time.monotonic() + DEADLINE
        while not group_gone(process.pid) and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        if not group_gone(process.pid):  # a hang: end every rank, then fail
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    assert group_gone(process.pid), "a rank outlived the run"
    err = log.read_text()
    assert process.returncode == 143, err[-3000:]
    (line,) = [line for line in err.splitlines() if line.startswith("medadv run: stopped by SIGTERM")]
    assert line.endswith("run the same command again to resume"), line
    stored = statuses(store_path)
    done = {key for key, status in stored.items() if status == "done"}
    assert set(stored.values()) == {"done"} and done  # nothing running, nothing half stored
    with ResultsStore(store_path) as store:
        first_finish = {record.key: record.finished_at for record in store.records()}
        assert store.leases() == {}
    abandoned = re.findall(r"cell (\S+) abandoned", line)
    assert not set(abandoned) & done

    again = subprocess.run(["timeout", "-s", "KILL", str(DEADLINE), *command], cwd=ROOT, env=run_env(),
                           capture_output=True, text=True)
    assert again.returncode == 0, again.stderr[-3000:]
    keys = {cell.key for cell in benchmark.cells}
    assert f"{len(keys) - len(done)} cells run, {len(done)} already done, 0 failed" in again.stdout
    with ResultsStore(store_path) as store:
        records = {record.key: record for record in store.records(status=None)}
    assert set(records) == keys and {record.status for record in records.values()} == {"done"}
    assert all(records[key].finished_at == first_finish[key] for key in done)  # done cells were not redone
