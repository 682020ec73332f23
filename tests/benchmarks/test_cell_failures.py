"""What a cell does when its evaluation does not simply work: a CUDA out-of-memory error retries it with half
the batch size down to a floor (recording the size used, keeping the number of images), and metrics that are
NaN or infinite store it as failed with the reason, never as numbers."""

from __future__ import annotations

import math

import pytest
import torch

from benchmarks.finite_metrics import non_finite
from benchmarks.store import ResultsStore
from callbacks.batch_size import halving_on_oom
from tests.benchmarks.fake_cells import accuracy, fake_runner


def oom_above(threshold: int, tried: list[int]):
    def run(size: int) -> int:
        tried.append(size)
        if size > threshold:
            raise torch.cuda.OutOfMemoryError(f"CUDA out of memory: {size} samples")
        return size * 10

    return run


@pytest.mark.parametrize(("start", "threshold", "floor", "sizes"), [
    (32, 32, 1, [32]), (32, 5, 1, [32, 16, 8, 4]), (7, 1, 1, [7, 3, 1]), (32, 9, 6, [32, 16, 8]),
])
def test_halving_on_oom_retries_down_to_what_fits(start, threshold, floor, sizes):
    tried, heard = [], []
    result, used = halving_on_oom(oom_above(threshold, tried), start, floor, lambda old, new: heard.append((old, new)))
    assert tried == sizes and used == sizes[-1] and result == used * 10
    assert heard == list(zip(sizes, sizes[1:], strict=False))


def test_halving_on_oom_stops_at_the_floor_and_passes_other_errors_on():
    tried = []
    with pytest.raises(torch.cuda.OutOfMemoryError):
        halving_on_oom(oom_above(2, tried), 16, floor=4)
    assert tried == [16, 8, 4]

    def broken(size: int) -> None:
        tried.append(size)
        raise RuntimeError("not memory")

    tried.clear()
    with pytest.raises(RuntimeError, match="not memory"):
        halving_on_oom(broken, 16)
    assert tried == [16]


def test_a_cell_out_of_memory_reruns_with_half_the_batch_and_records_it(tmp_path, capsys):
    seen = []

    def evaluate(cell, batch_size, max_batches):
        seen.append((batch_size, max_batches))
        if batch_size > 2:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory")
        return accuracy()

    runner = fake_runner(tmp_path, evaluate, batch_size=8)
    (cell, *_) = runner.benchmark.cells
    with ResultsStore(tmp_path / "r.db") as store:
        record = runner.run_cell(cell, runner.running(cell), store)
        (stored,) = store.records()
    assert seen == [(8, 1), (4, 2), (2, 4)]  # max_batches 1 of 8 images: the same 8 images in smaller batches
    assert record.status == stored.status == "done" and stored.settings["test_batch_size"] == 2
    assert "CUDA out of memory at batch size 8; retrying with 4" in capsys.readouterr().err
    assert runner.trained(cell.models[0]).datamodule.batch_size == 8  # restored for the next cell


def test_a_cell_out_of_memory_at_the_floor_is_stored_as_failed(tmp_path):
    def evaluate(cell, batch_size, max_batches):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory")

    runner = fake_runner(tmp_path, evaluate, batch_size=8, min_batch_size=4)
    (cell, *_) = runner.benchmark.cells
    with ResultsStore(tmp_path / "r.db") as store:
        runner.run_cell(cell, runner.running(cell), store)
        (failed,) = store.records(status="failed")
    assert "OutOfMemoryError" in failed.error and failed.metrics == {}


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_metrics_store_the_cell_as_failed_with_the_reason(tmp_path, bad):
    runner = fake_runner(tmp_path, lambda cell, batch_size, max_batches: accuracy(bad))
    (cell, *_) = runner.benchmark.cells
    with ResultsStore(tmp_path / "r.db") as store:
        record = runner.run_cell(cell, runner.running(cell), store)
        assert store.records() == []
        (failed,) = store.records(status="failed")
    assert record.status == "failed" and failed.metrics == {}
    assert f"non-finite metrics (diverged model or attack?): adv/accuracy={bad}" in failed.error


def test_only_result_metrics_must_be_finite():
    metrics = {"adv/accuracy": 0.5, "adv/linf": math.nan, "clean/dice": math.inf, "a->b/success_rate": -math.inf,
               "adv/cos_mean": math.nan, "detect/fgsm/kd/auc": math.nan, "detect/fgsm/kd/tpr_at_5fpr": math.nan,
               "clean/auc": math.nan, "adv/psnr": math.inf, "adv/accuracy_ci_low": math.nan}
    assert non_finite(metrics) == ["a->b/success_rate=-inf", "adv/linf=nan", "clean/dice=inf"]
