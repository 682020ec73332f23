"""The `medadv` command line: config resolution, and `train` writing a checkpoint that loads with
weights_only=True and reproduces the trained model."""

from __future__ import annotations

import pytest
import torch

from benchmarks.cli import main
from benchmarks.grid import CONFIG_DIR, resolve_config
from lightning_modules.classifier import ClassifierModule


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
