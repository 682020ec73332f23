"""SIGTERM during a run, in one process: the cell in progress is abandoned (nothing of it stored, its lease
given back), the cells before it stay done, the run reports the preemption, and a rerun does exactly the
rest. A cell already being written to the store is written first. Inside a trainer the run's handler, not
Lightning's, gets SIGTERM. (End to end, with Lightning inside each cell and the CLI's exit status, in
test_workers.py; under DDP in test_preemption_ddp.py.)"""

from __future__ import annotations

import os
import signal

import lightning.pytorch as pl
import pytest
from lightning.pytorch.demos.boring_classes import BoringModel

from benchmarks.preemption import Preempted, Preemption
from benchmarks.store import ResultsStore
from tests.benchmarks.fake_cells import accuracy, fake_runner


def sigterm_in(victim: int, evaluated: list[str]):
    """An evaluation that records each cell and sends this process SIGTERM during the ``victim``-th one."""

    def evaluate(cell, batch_size, max_batches):
        evaluated.append(cell.key)
        if len(evaluated) == victim:
            os.kill(os.getpid(), signal.SIGTERM)
        return accuracy()

    return evaluate


def test_sigterm_abandons_the_cell_in_progress_and_a_rerun_does_the_rest(tmp_path):
    first = []
    runner = fake_runner(tmp_path, sigterm_in(3, first))
    previous = signal.getsignal(signal.SIGTERM)
    summary = runner.run()
    assert signal.getsignal(signal.SIGTERM) == previous  # the run's handler is gone with it
    keys = [cell.key for cell in runner.benchmark.cells]
    assert summary.preempted and summary.abandoned == keys[2] and summary.done == 2
    with ResultsStore(runner.options.store_path) as store:
        assert sorted(store.finished()) == sorted(keys[:2])
        assert [r.key for r in store.records(status=None)] == sorted(keys[:2])  # no running row left
        assert store.leases() == {}
    again = []
    summary = fake_runner(tmp_path, sigterm_in(0, again)).run()
    assert not summary.preempted and summary.skipped == 2 and summary.done == 4 and again == keys[2:]
    with ResultsStore(runner.options.store_path) as store:
        assert sorted(store.finished()) == sorted(keys)


def test_sigterm_while_a_cell_is_stored_stores_it_then_stops(tmp_path, monkeypatch):
    runner = fake_runner(tmp_path, lambda cell, batch_size, max_batches: accuracy())
    finish = ResultsStore.finish

    def finish_under_sigterm(store, record, *args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)
        finish(store, record, *args, **kwargs)

    monkeypatch.setattr(ResultsStore, "finish", finish_under_sigterm)
    summary = runner.run()
    assert summary.preempted and summary.done == 1 and summary.abandoned is None
    with ResultsStore(runner.options.store_path) as store:
        assert list(store.finished()) == [runner.benchmark.cells[0].key]


def test_inside_a_trainer_sigterm_goes_to_the_run_s_handler_alone(tmp_path):
    """Lightning chains its handler in front of the run's when a trainer starts (under DDP it broadcasts from
    inside it); the run's handler, a callback of the trainer, takes SIGTERM back, so Lightning's never runs."""

    class Signalled(BoringModel):
        def test_step(self, batch, batch_idx):
            os.kill(os.getpid(), signal.SIGTERM)
            return super().test_step(batch, batch_idx)

    preemption = Preemption()
    trainer = pl.Trainer(accelerator="cpu", callbacks=[preemption], logger=False, enable_progress_bar=False,
                         enable_model_summary=False, default_root_dir=tmp_path)
    with preemption.installed():
        with pytest.raises(Preempted):
            trainer.test(Signalled(), verbose=False)
        assert signal.getsignal(signal.SIGTERM) == preemption.handle  # the trainer's teardown hands it back
    assert preemption.received and not trainer.received_sigterm
