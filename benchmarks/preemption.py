"""SIGTERM, as SLURM and Kubernetes send it before they stop a job: the run abandons the cell it is in (or
first finishes writing one to the store), leaves the store consistent, and exits non-zero saying how to
resume. Lightning's own handler (2.x) only sets a flag that its loops check between batches and then raises
``SIGTERMException``; the runner's handler, installed for the whole run, raises :class:`Preempted` at once
and Lightning tears its trainer down on the way out."""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

from lightning.pytorch.utilities.exceptions import SIGTERMException

EXIT_CODE = 128 + signal.SIGTERM  # what a shell reports for a process ended by SIGTERM


class Preempted(SIGTERMException):
    """The run received SIGTERM. A ``SystemExit``, so no ``except Exception`` on the way swallows it."""


class Preemption:
    """Turns SIGTERM into :class:`Preempted` in this process while :meth:`installed` is active; within
    :meth:`shielded` (a store write that must not be cut short) it is only noted, for :meth:`check`."""

    def __init__(self) -> None:
        self.received = False
        self.shielding = 0
        self.pid = os.getpid()

    def handle(self, signum: int, frame: FrameType | None) -> None:
        if os.getpid() != self.pid:  # a forked data-loader worker inherits the handler: it just ends
            os._exit(EXIT_CODE)
        self.received = True
        if not self.shielding:
            raise Preempted(f"received signal {signum}")

    def check(self) -> None:
        """Raise :class:`Preempted` if SIGTERM came while it could not be raised."""
        if self.received and not self.shielding:
            raise Preempted("received SIGTERM")

    @contextmanager
    def installed(self) -> Iterator[Preemption]:
        """The handler for the block (only the main thread may install one: elsewhere this does nothing)."""
        if threading.current_thread() is not threading.main_thread():
            yield self
            return
        previous = signal.signal(signal.SIGTERM, self.handle)
        try:
            yield self
        finally:
            signal.signal(signal.SIGTERM, previous)

    @contextmanager
    def shielded(self) -> Iterator[None]:
        """SIGTERM only noted within the block; :meth:`check` raises it afterwards."""
        self.shielding += 1
        try:
            yield
        finally:
            self.shielding -= 1
