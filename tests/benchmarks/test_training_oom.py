"""Training that runs out of CUDA memory (a fake ``OutOfMemoryError`` above a batch size, on CPU) is done again
from scratch with half the batch size: the model equals one trained at that size from the start (seeded and
trained to the end), the cache file and the cell record the size, and at the floor one error names the config
and every size tried."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from benchmarks.grid import load_benchmark
from benchmarks.model_cache import checkpoint_path, load_cached, load_or_train
from benchmarks.store import ResultsStore
from benchmarks.training import build_cli, fit_halving_on_oom, train_from_config
from lightning_modules.task_module import TaskModule
from tests.benchmarks.fake_cells import WORKERS, accuracy, fake_runner

CPU = ("--trainer.accelerator=cpu",)


@pytest.fixture
def oom_above(monkeypatch):
    """``oom_above(n)``: training steps on batches of more than n images raise CUDA out-of-memory; returns the
    list of batch sizes every training step saw."""
    step = TaskModule.training_step

    def patch(threshold: int) -> list[int]:
        seen = []

        def training_step(module, batch, batch_idx):
            seen.append(len(batch["image"]))
            if seen[-1] > threshold:
                raise torch.cuda.OutOfMemoryError(f"CUDA out of memory: {seen[-1]} images")
            return step(module, batch, batch_idx)

        monkeypatch.setattr(TaskModule, "training_step", training_step)
        return seen

    return patch


def same_weights(model: torch.nn.Module, expected: dict[str, torch.Tensor]) -> bool:
    state = model.state_dict()
    return state.keys() == expected.keys() and all(torch.equal(state[name], expected[name]) for name in expected)


def workers_spec():
    (spec,) = {spec for cell in load_benchmark(WORKERS).cells for spec in cell.models}
    return spec


def test_training_out_of_memory_trains_again_from_scratch_with_half_the_batch(tmp_path, oom_above, capsys):
    spec = workers_spec()  # 32 synthetic images (about 20 to train on), batch size 32 in the train config
    seen = oom_above(8)
    trained = load_or_train(spec, tmp_path / "models", CPU)
    err = capsys.readouterr().err
    split = len(trained.datamodule.datasets["train"])
    assert seen[:2] == [min(split, 32), 16] and set(seen[2:]) == {8}  # 32 (one batch of the split), 16, 8 fits
    assert f"training {spec.train_config}: CUDA out of memory at batch size 32; training again from scratch " \
           "with 16" in err and "at batch size 16; training again from scratch with 8" in err
    assert trained.trained and trained.batch_size == 8
    assert trained.datamodule.batch_size == 32  # the cells evaluate at the config's batch size

    retried = seen[2:]
    reference, size = fit_halving_on_oom(spec.train_config, tmp_path / "reference",
                                         [*spec.args, *CPU, "--data.init_args.batch_size=8"])
    assert size == 8 and seen[2 + len(retried):] == retried  # the retry ran every step of a training at 8
    expected = reference.model.state_dict()
    assert same_weights(trained.module, expected)  # seeded as the first try: the same start, the same steps

    fresh = build_cli(spec.train_config, tmp_path / "fresh", [*spec.args, *CPU]).model
    cached = load_cached(checkpoint_path(spec, tmp_path / "models"), fresh)
    assert cached["batch_size"] == 8 and same_weights(fresh, expected)
    again = load_or_train(spec, tmp_path / "models", CPU)
    assert not again.trained and again.batch_size == 8


def test_training_out_of_memory_at_the_floor_names_the_config_and_every_size(tmp_path, oom_above):
    spec = workers_spec()
    seen = oom_above(0)
    with pytest.raises(torch.cuda.OutOfMemoryError) as raised:
        train_from_config(spec.train_config, tmp_path, [*spec.args, *CPU], min_batch_size=6)
    assert str(raised.value) == (f"training {spec.train_config} ran out of CUDA memory at every batch size tried "
                                 "(32, 16, 8, 6; the floor is 6)")
    assert len(seen) == 4 and seen[1:] == [16, 8, 6] and not list(tmp_path.glob("*.ckpt"))


def test_a_cell_records_the_batch_size_its_models_were_trained_with(tmp_path):
    runner = fake_runner(tmp_path, lambda cell, batch_size, max_batches: accuracy())
    trained = runner.trained
    runner.trained = lambda spec: replace(trained(spec), batch_size=8)
    cell = runner.benchmark.cells[0]
    with ResultsStore(tmp_path / "r.db") as store:
        runner.run_cell(cell, runner.running(cell), store)
        (stored,) = store.records()
    assert stored.settings["train_batch_size"] == {"resnet10t": 8}
