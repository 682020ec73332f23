"""Leases on cells, so several unsharded `medadv run` processes on one store split the grid: each cell is
claimed in the store (claimed-by, heartbeat, expiry) before it runs, a background heartbeat keeps the claims
of a live worker fresh, and a cell whose worker died is taken over once its lease expires, or at once when
the worker was a process on this machine that no longer exists."""

from __future__ import annotations

import math
import os
import socket
import sqlite3
import threading
import time
from pathlib import Path

from benchmarks.store import ResultsStore

DEFAULT_LEASE_SECONDS = 300.0
HEARTBEATS_PER_LEASE = 4  # renewals within one lease: a late heartbeat or two does not lose it


def check_lease_seconds(seconds: float) -> float:
    """``seconds`` when a usable lease length (finite, > 0); ValueError naming --lease-seconds otherwise."""
    if not (isinstance(seconds, (int, float)) and math.isfinite(seconds) and seconds > 0):
        raise ValueError(f"--lease-seconds must be a finite number of seconds > 0, got {seconds!r}")
    return float(seconds)


def worker_name() -> str:
    """This process as a lease holder: ``host:pid:start``, unique across restarts of a pid."""
    return f"{socket.gethostname()}:{os.getpid()}:{int(time.time() * 1000)}"


def stale(worker: str) -> bool:
    """Whether the lease holder ``worker`` (from :func:`worker_name`) was a process on this host that has
    ended; a worker on another host counts as alive until its lease expires."""
    host, pid, _ = worker.rsplit(":", 2)
    if host != socket.gethostname() or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # a live process of another user
        return False
    return False


class Heartbeat:
    """A daemon thread that renews ``worker``'s leases in the store at ``path`` (open in this process) every
    ``seconds / 4``, on its own connection, while the ``with`` block runs."""

    def __init__(self, path: Path, worker: str, seconds: float) -> None:
        self.path, self.worker, self.seconds = path, worker, seconds
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._beat, name="medadv-lease-heartbeat", daemon=True)

    def __enter__(self) -> Heartbeat:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopped.set()
        self.thread.join()

    def _beat(self) -> None:
        with ResultsStore(self.path, checked=True) as store:
            while not self.stopped.wait(self.seconds / HEARTBEATS_PER_LEASE):
                try:
                    store.renew(self.worker, self.seconds)
                except sqlite3.Error:  # a busy or briefly unreadable store: the next beat tries again
                    continue
