"""The evaluation speed options as benchmark config keys: checked as the config loads, part of the cell hash,
passed to the callbacks of attack and transfer cells."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.cell_kinds import CELL_KINDS
from benchmarks.grid import load_benchmark
from benchmarks.problems import ConfigError
from callbacks.batch_size import AttackBatchSizes

TINY = Path(__file__).parent / "configs" / "tiny.yaml"
FAST = [
    "evaluation.precision=bf16-mixed",
    "evaluation.channels_last=false",
    "evaluation.compile=true",
    "evaluation.attack_batch_size=auto",
]


def test_speed_keys_reach_the_callbacks_and_change_the_hash():
    plain = {cell.key: cell for cell in load_benchmark(TINY).cells}
    fast = {cell.key: cell for cell in load_benchmark(TINY, assignments=FAST).cells}
    attack = next(cell for cell in fast.values() if cell.kind == "attack")
    assert attack.config_hash != plain[attack.key].config_hash  # results in another precision are other results
    callback = CELL_KINDS["attack"].callback(attack, {})
    assert (callback.precision, callback.channels_last, callback.compile) == ("bf16-mixed", False, True)
    assert isinstance(callback.attack_batch_size, AttackBatchSizes)
    transfer = next(cell for cell in fast.values() if cell.kind == "transfer")
    assert CELL_KINDS["transfer"].callback(transfer, {"resnet18": None, "resnet10t": None}).precision == "bf16-mixed"
    default = CELL_KINDS["attack"].callback(plain[attack.key], {})
    assert (default.precision, default.channels_last, default.compile, default.attack_batch_size) == (
        "32",
        None,
        False,
        None,
    )


@pytest.mark.parametrize(
    ("assignment", "key"),
    [
        ("evaluation.precision=fp16", "evaluation.precision"),
        ("evaluation.channels_last=sometimes", "evaluation.channels_last"),
        ("evaluation.compile=1", "evaluation.compile"),
        ("evaluation.attack_batch_size=0", "evaluation.attack_batch_size"),
    ],
)
def test_bad_speed_keys_are_reported_with_their_key(assignment, key):
    with pytest.raises(ConfigError, match=key):
        load_benchmark(TINY, assignments=[assignment])
