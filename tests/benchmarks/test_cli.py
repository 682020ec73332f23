"""The `medadv` command line: config resolution, `train` writing a checkpoint that loads with
weights_only=True and reproduces the trained model, `run` refusing a bad config with every problem at
once, `run --dry-run` writing nothing, and `run --deterministic` giving bit-identical reruns."""

from __future__ import annotations

import subprocess
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from benchmarks.cli import main
from benchmarks.grid import CONFIG_DIR, load_benchmark, resolve_config
from benchmarks.runner import RunOptions, cell_record, use_deterministic_algorithms
from benchmarks.store import ResultsStore
from lightning_modules.classifier import ClassifierModule
from tests.benchmarks.cli_runs import ROOT, medadv, run_env, run_medadv


def test_shipped_configs_resolve_by_name():
    for name in ("synthetic_fundus", "synthetic_lung_ct", "synthetic_endoscopy", "retinamnist", "cxr_lung", "ead2019"):
        assert resolve_config(name, "train") == CONFIG_DIR / "train" / f"{name}.yaml"


def test_unknown_config_names_the_shipped_ones():
    with pytest.raises(FileNotFoundError, match="synthetic_fundus"):
        resolve_config("no_such_config", "train")


def test_help_lists_the_commands(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert all(command in out for command in ("run", "results", "report", "train"))


@pytest.mark.slow
def test_train_saves_a_checkpoint_that_reloads(tmp_path, capsys):
    code = main([
        "train", "--config", "synthetic_fundus", "--output", str(tmp_path),
        "--trainer.max_epochs", "1", "--data.init_args.num_samples", "40", "--data.init_args.size", "32",
    ])
    assert code == 0
    checkpoint = tmp_path / "synthetic_fundus.ckpt"
    assert checkpoint.is_file()
    assert "test_acc" in capsys.readouterr().out
    module = ClassifierModule.load_from_checkpoint(checkpoint, weights_only=True).eval()
    again = ClassifierModule.load_from_checkpoint(checkpoint, weights_only=True).eval()
    images = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(module(images), again(images))
    state = torch.load(checkpoint, weights_only=True)["state_dict"]
    assert all(torch.equal(state[k], v) for k, v in module.state_dict().items())


TINY = Path(__file__).parent / "configs" / "tiny.yaml"


def test_run_reports_every_problem_at_once_and_runs_nothing(tmp_path, capsys):
    config = tmp_path / "bad.yaml"
    config.write_text(
        "name: bad\nseeds: [1.5]\nevaluation: {examples: -3}\n"
        "overrides: {model.init_args.model_name: resnet999, data.init_args.num_samples: 40}\n"
        "datasets:\n  fundus:\n    train: synthetic_fundus\n    attacks: {fgsm: {budgets: '28'}}\n"
    )
    output = tmp_path / "out"
    assert main(["run", "--config", str(config), "--output", str(output)]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert lines[0] == "medadv run: error: 4 problem(s) in the config; nothing ran:"
    assert lines[1:] == [
        f"  {config}: seeds: must list integers in [0, 4294967295], got 1.5 in [1.5]",
        f"  {config}: evaluation.examples: must be an integer >= 0, got -3",
        f"  {config}: datasets.fundus.attacks.fgsm.budgets: must be a non-empty list of budgets such as "
        "[2/255, 8/255], got '28'",
        f"  {config}: overrides.model.init_args.model_name: 'resnet999' is not a known network (see "
        "timm.list_models())",
    ]
    assert not output.exists()


def test_dry_run_lists_the_cells_and_writes_nothing(tmp_path, capsys):
    output = tmp_path / "out"
    assert main(["run", "--config", str(TINY), "--output", str(output), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "tiny: config checked in" in out and "11 cells, 0 done, 11 to run; models: 2 to train, 0 cached" in out
    assert "  to run  tiny/fundus/resnet10t/deepfool/min/seed0" in out
    assert not output.exists()  # no store, no model, no log
    benchmark = load_benchmark(TINY)
    (done,) = [cell for cell in benchmark.cells if cell.key == "tiny/fundus/resnet18/fgsm/8_255/seed0"]
    output.mkdir()
    with ResultsStore(output / "results.db") as store:
        store.start(cell_record(done, "running"))
        store.finish(replace(cell_record(done, "done"), metrics={"adv/accuracy": 0.5}))
    assert main(["run", "--config", str(TINY), "--output", str(output), "--dry-run", "--shard", "0/1"]) == 0
    out = capsys.readouterr().out
    assert "11 cells, 1 done, 10 to run" in out and "  done    tiny/fundus/resnet18/fgsm/8_255/seed0" in out
    assert sorted(path.name for path in output.iterdir()) == ["results.db"]  # SQLite's -wal/-shm close with it
    with ResultsStore(output / "results.db") as store:
        assert [record.key for record in store.records(status=None)] == [done.key]


def test_a_reader_that_goes_away_ends_the_listing_quietly(tmp_path):
    """`medadv run --dry-run | head -1`: the pipe closes before the listing is written; no traceback, and the
    status a shell gives a process ended by SIGPIPE."""
    command = [*medadv("run", "--config", str(TINY), "--output", str(tmp_path), "--dry-run")]
    process = subprocess.Popen(command, cwd=ROOT, env=run_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    process.stdout.close()  # no reader: the first write fails with EPIPE
    _, err = process.communicate(timeout=120)
    assert process.returncode == 141, err.decode()[-2000:]
    assert b"Traceback" not in err and b"BrokenPipeError" not in err


@pytest.mark.parametrize(("mode", "lightning", "warn_only"), [("error", True, False), ("warn", "warn", True)])
def test_deterministic_mode_reaches_torch_and_lightning(mode, lightning, warn_only):
    options = RunOptions(deterministic=mode)
    assert options.trainer_settings["deterministic"] == lightning
    assert "deterministic" not in RunOptions().trainer_settings  # Lightning's own default otherwise
    previous = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled())
    benchmark = torch.backends.cudnn.benchmark
    try:
        use_deterministic_algorithms(warn_only=warn_only)
        assert torch.are_deterministic_algorithms_enabled() and not torch.backends.cudnn.benchmark
        assert torch.is_deterministic_algorithms_warn_only_enabled() == warn_only
    finally:
        torch.use_deterministic_algorithms(previous[0], warn_only=previous[1])
        torch.backends.cudnn.benchmark = benchmark
    with pytest.raises(ValueError, match="deterministic must be one of .* got 'yes'"):
        RunOptions(deterministic="yes")


@pytest.mark.slow
def test_deterministic_runs_are_bit_identical(tmp_path):
    """The tiny grid's classifier (trained afresh in each run) under FGSM and randomly started PGD."""
    dropped = ("models.resnet10t", "transfer", "detection", "attacks.deepfool", "attacks.bim")
    narrowed = [f"--set=datasets.fundus.{key}=null" for key in dropped] + [
        "--set=datasets.fundus.attacks.fgsm.budgets=[8/255]",
        "--set=datasets.fundus.attacks.pgd={budgets: [8/255], settings: {steps: 3}}",
    ]
    runs = []
    for run in ("first", "second"):
        output = tmp_path / run
        options = ["--output", str(output), "--no-report", "--deterministic", "--accelerator", "cpu"]
        run_medadv(["run", "--config", str(TINY), *options, *narrowed])
        with ResultsStore(output / "results.db") as store:
            records = store.records()
        runs.append({record.key: record.metrics for record in records})
        for metrics in runs[-1].values():
            metrics.pop("adv/seconds_per_image")  # wall time
    assert sorted(runs[0]) == ["tiny/fundus/resnet18/fgsm/8_255/seed0", "tiny/fundus/resnet18/pgd/8_255/seed0"]
    assert runs[0] == runs[1]  # exactly: == on every float, no tolerance
