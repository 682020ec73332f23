"""Impossible hardware requests and run options are refused by `medadv run` in one line, before the config is
even read and before anything is written."""

from __future__ import annotations

import os

import pytest
import torch

from benchmarks.cli import main

CPUS = os.cpu_count() or 1
REQUESTS = {
    "no devices": (["--devices", "0"], "`Trainer(devices=0)` value is not a valid input"),
    "negative devices": (["--accelerator", "cpu", "--devices", "-3"], "should be an int > 0"),
    "more processes than cores": (["--accelerator", "cpu", "--devices", str(CPUS + 1)],
                                  f"{CPUS + 1} CPU processes per node, but this machine has {CPUS} cores"),
    "no nodes": (["--num-nodes", "0"], "`num_nodes` must be a positive integer, but got 0"),
    "unknown strategy": (["--strategy", "fastest"], "invalid strategy name"),
    "unknown accelerator": (["--accelerator", "quantum"], "invalid accelerator name"),
}


def refused(capsys, *args: str) -> str:
    """Run `medadv run` with ``args`` on a config that does not exist; the one line it prints (exit code 2)."""
    code = main(["run", "--config", "no_such_config", *args])
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(lines) == 1, lines
    return lines[0]


@pytest.mark.parametrize("case", REQUESTS)
def test_impossible_hardware_is_one_line_before_the_config_is_read(case, capsys, tmp_path):
    args, reason = REQUESTS[case]
    line = refused(capsys, *args, "--output", str(tmp_path / "out"))
    assert line.startswith("medadv run: error: impossible hardware request (--accelerator ") and reason in line
    assert " ".join(args[-2:]) in line
    assert not (tmp_path / "out").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_a_gpu_on_a_machine_without_one_is_refused(capsys):
    assert "impossible hardware request (--accelerator gpu --devices 1" in refused(capsys, "--accelerator", "gpu")


@pytest.mark.parametrize("seconds", ["0", "-5", "nan", "inf"])
def test_a_lease_that_cannot_expire_or_never_holds_is_refused(seconds, capsys):
    line = refused(capsys, "--lease-seconds", seconds)
    assert line == f"medadv run: error: --lease-seconds must be a finite number of seconds > 0, got {float(seconds)}"
