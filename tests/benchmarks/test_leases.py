"""Leases on cells in the store: a claim is exclusive while its worker's lease is live, lapses when it expires
or when its worker was a process on this host that has ended, and ends with the cell; a heartbeat keeps it
alive; stores of older schema versions gain the leases table when opened. (Three real workers sharing one
store: test_workers.py.)"""

from __future__ import annotations

import dataclasses
import socket
import sqlite3
import subprocess
import sys
import time

import pytest

from benchmarks import store as store_module
from benchmarks.leases import Heartbeat, check_lease_seconds, stale, worker_name
from benchmarks.store import SCHEMA_VERSION, CellRecord, ResultsStore


def running(key: str = "b/a", config_hash: str = "hash") -> CellRecord:
    return CellRecord(key, "b", config_hash, "attack", "d", "m", "pgd", "8_255", 0, "running")


def alive(worker: str) -> bool:
    return False


@pytest.fixture
def store(tmp_path):
    with ResultsStore(tmp_path / "r.db") as opened:
        yield opened


def test_a_live_lease_keeps_the_cell_to_its_worker_until_it_expires(store, monkeypatch):
    clock = [1000.0]
    monkeypatch.setattr(store_module, "now", lambda: clock[0])
    assert store.claim(running(), "host-a:1:1", 30, since=0, stale=alive) == "claimed"
    assert store.claim(running(), "host-b:2:2", 30, since=0, stale=alive) == "held"
    assert store.claim(running(), "host-a:1:1", 30, since=0, stale=alive) == "claimed"  # its own: renewed
    clock[0] += 29
    assert store.claim(running(), "host-b:2:2", 30, since=0, stale=alive) == "held"
    clock[0] += 2  # past the lease: the worker stopped heart-beating
    assert store.claim(running(), "host-b:2:2", 30, since=0, stale=alive) == "claimed"
    assert store.leases() == {"b/a": "host-b:2:2"}
    assert [r.status for r in store.records(status=None)] == ["running"]


def test_a_heartbeat_renews_only_its_workers_leases(store, monkeypatch):
    clock = [1000.0]
    monkeypatch.setattr(store_module, "now", lambda: clock[0])
    store.claim(running("b/a"), "a:1:1", 30, since=0, stale=alive)
    store.claim(running("b/b"), "b:2:2", 30, since=0, stale=alive)
    clock[0] += 25
    assert store.renew("a:1:1", 30) == 1
    clock[0] += 10  # a's lease runs to 1055, b's ran out at 1030
    assert store.claim(running("b/a"), "c:3:3", 30, since=0, stale=alive) == "held"
    assert store.claim(running("b/b"), "c:3:3", 30, since=0, stale=alive) == "claimed"


def test_a_finished_cell_ends_its_lease_and_is_not_claimed_again(store):
    store.claim(running(), "a:1:1", 30, since=0, stale=alive)
    store.finish(dataclasses.replace(running(), status="done", finished_at=5.0))
    assert store.leases() == {}
    assert store.claim(running(), "b:2:2", 30, since=0, stale=alive) == "done"
    assert store.claim(running(config_hash="changed"), "b:2:2", 30, since=0, stale=alive) == "claimed"


def test_a_cell_failed_in_this_round_is_not_retried_but_an_older_failure_is(store):
    store.claim(running(), "a:1:1", 30, since=0, stale=alive)
    store.finish(dataclasses.replace(running(), status="failed", error="boom", finished_at=50.0))
    assert store.claim(running(), "b:2:2", 30, since=40.0, stale=alive) == "failed"
    assert store.claim(running(), "b:2:2", 30, since=60.0, stale=alive) == "claimed"


def test_release_gives_the_cell_back_at_once(store):
    store.claim(running(), "a:1:1", 300, since=0, stale=alive)
    store.release("b/a", "someone-else:9:9")  # not its lease: nothing happens to the lease
    assert store.leases() == {"b/a": "a:1:1"}
    store.release("b/a", "a:1:1")
    assert store.leases() == {} and store.records(status=None) == []
    assert store.claim(running(), "b:2:2", 300, since=0, stale=alive) == "claimed"


def test_a_worker_process_that_ended_on_this_host_is_stale_at_once():
    ended = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    host = socket.gethostname()
    assert stale(f"{host}:{ended.stdout.strip()}:1")
    assert not stale(worker_name())  # this process
    assert not stale(f"another-{host}:{ended.stdout.strip()}:1")  # elsewhere: alive until its lease expires


def expiry_seen_by_another_process(path) -> float:
    """The lease's expiry as a separate process reads it with plain sqlite3 (and, closing, checkpoints)."""
    script = ("import sqlite3, sys; "
              "print(sqlite3.connect(sys.argv[1]).execute('SELECT expires_at FROM leases').fetchone()[0])")
    return float(subprocess.run([sys.executable, "-c", script, str(path)], capture_output=True, text=True).stdout)


def test_the_heartbeat_thread_keeps_the_lease_alive_for_every_process(store):
    worker = worker_name()
    store.claim(running(), worker, 1.0, since=0, stale=alive)
    with Heartbeat(store.path, worker, 1.0):
        for _ in range(2):  # the heartbeat's connection must not drop this process's SQLite locks, or the other
            time.sleep(1.0)  # process's close deletes the write-ahead log and later renewals are lost
            assert expiry_seen_by_another_process(store.path) > time.time()
        assert store.claim(running(), "other:1:1", 1.0, since=0, stale=alive) == "held"
    time.sleep(1.1)
    assert store.claim(running(), "other:1:1", 1.0, since=0, stale=alive) == "claimed"


def test_an_older_store_gains_the_leases_table_and_keeps_its_cells(tmp_path):
    path = tmp_path / "v1.db"
    with ResultsStore(path) as store:
        store.finish(dataclasses.replace(running(), status="done", finished_at=1.0))
    connection = sqlite3.connect(path)
    connection.executescript("DROP TABLE leases; PRAGMA user_version = 1;")
    connection.close()
    with ResultsStore(path) as store:
        assert list(store.finished()) == ["b/a"] and store.leases() == {}
        assert store.connection.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 2


@pytest.mark.parametrize("seconds", [0, -1, float("nan"), float("inf"), "10"])
def test_lease_seconds_must_be_a_positive_finite_number(seconds):
    with pytest.raises(ValueError, match="--lease-seconds must be a finite number of seconds > 0"):
        check_lease_seconds(seconds)

