"""SIGTERM, as SLURM and Kubernetes send it before they stop a job: the run abandons the cell it is in (or
first finishes writing one to the store), leaves the store consistent, and exits non-zero saying how to
resume. Lightning's own handler (2.x) sets a flag that its loops check between batches, and under DDP it
broadcasts that flag from inside the signal handler; the runner's handler, installed for the whole run and put
back in place of Lightning's whenever a trainer starts a stage, raises :class:`Preempted` at once and Lightning
tears its trainer down on the way out. Under DDP each rank then leaves its process group, so that no peer
waits for it in a collective operation."""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any, NoReturn

import torch
from lightning.pytorch import Callback
from lightning.pytorch.utilities.exceptions import SIGTERMException

EXIT_CODE = 128 + signal.SIGTERM  # what a shell reports for a process ended by SIGTERM


class Preempted(SIGTERMException):
    """The run received SIGTERM. A ``SystemExit``, so no ``except Exception`` on the way swallows it."""


class Preemption(Callback):
    """Turns SIGTERM into :class:`Preempted` in this process while :meth:`installed` is active; within
    :meth:`shielded` (a store write that must not be cut short) it is only noted, for :meth:`check`.

    Also a callback for every trainer of the run: when the trainer starts a stage it takes SIGTERM back from
    the handler Lightning chains in front of it, whose collective broadcast can pair with another rank's
    different collective operation (a rank waiting for its peer) and then hang or fail the cell."""

    def __init__(self) -> None:
        self.received = False
        self.shielding = 0
        self.active = False
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
        self.active = True
        try:
            yield self
        finally:
            self.active = False
            signal.signal(signal.SIGTERM, previous)

    @contextmanager
    def shielded(self) -> Iterator[None]:
        """SIGTERM only noted within the block; :meth:`check` raises it afterwards."""
        self.shielding += 1
        try:
            yield
        finally:
            self.shielding -= 1

    def take_back(self, *_: Any) -> None:
        """Make the handler SIGTERM's only one again (Lightning restores it too when its trainer tears down)."""
        if self.active and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, self.handle)

    on_sanity_check_start = on_train_start = on_validation_start = on_test_start = on_predict_start = take_back


def leave_process_group() -> None:
    """End this rank's process group, if it has one: a peer waiting for it in a collective operation then fails
    at once (and stops on its own SIGTERM) instead of waiting out the group's timeout (30 minutes), and neither
    process waits for the other as it exits."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def exit_at_once(code: int) -> NoReturn:
    """End the process with ``code`` now, its output flushed, without Python's clean-up at exit: after SIGTERM
    the grace period before SIGKILL is short (SLURM's KillWait and Kubernetes' default: 30 s), and that clean-up
    (a full garbage collection of everything the run imported and built) took up to a minute on a loaded machine.
    The store is closed and the process group left by then."""
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
