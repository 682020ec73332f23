"""A model-cache file that does not load is named, moved aside as ``<name>.corrupt-<time>`` and reported as
not loaded (so the model is trained again), instead of failing every rerun; a pickle that is more than
tensors is still never executed."""

from __future__ import annotations

import pickle

import pytest
import torch
from torch import nn

from benchmarks.model_cache import load_cached


class Exploit:
    """A pickle that would create a file when unpickled without ``weights_only``."""

    def __init__(self, path) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (str(self.path), "w"))


def checkpoint(path, model: nn.Module) -> None:
    torch.save({"state_dict": model.state_dict(), "digest": "d", "args": []}, path)


CORRUPTIONS = {
    "garbage": lambda path, tmp: path.write_bytes(b"not a checkpoint" * 10),
    "empty": lambda path, tmp: path.write_bytes(b""),
    "truncated": lambda path, tmp: path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2]),
    "other shapes": lambda path, tmp: checkpoint(path, nn.Linear(5, 2)),
    "no state_dict": lambda path, tmp: torch.save({"weights": torch.zeros(2)}, path),
    "executable pickle": lambda path, tmp: path.write_bytes(
        pickle.dumps({"state_dict": Exploit(tmp / "pwned")}, protocol=2)),
}


@pytest.mark.parametrize("case", CORRUPTIONS)
def test_a_cache_file_that_does_not_load_is_named_and_moved_aside(tmp_path, case, capsys):
    path = tmp_path / "model-seed0-abc.pt"
    checkpoint(path, nn.Linear(3, 2))
    CORRUPTIONS[case](path, tmp_path)
    content = path.read_bytes()
    model = nn.Linear(3, 2)
    assert load_cached(path, model) is None
    (moved,) = tmp_path.glob("model-seed0-abc.pt.corrupt-*")
    assert not path.exists() and moved.read_bytes() == content
    assert f"model cache {path} does not load (" in capsys.readouterr().err
    assert not (tmp_path / "pwned").exists()


def test_a_good_cache_file_loads_and_stays(tmp_path):
    path = tmp_path / "model.pt"
    source = nn.Linear(3, 2)
    checkpoint(path, source)
    model = nn.Linear(3, 2)
    assert load_cached(path, model)["digest"] == "d" and path.is_file()
    assert torch.equal(model.weight, source.weight)
