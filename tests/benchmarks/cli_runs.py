"""Running `medadv` as users do, in a subprocess with a hard time limit, for the runner and suite tests."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def medadv(*args: str) -> list[str]:
    return [sys.executable, "-m", "benchmarks.cli", *args]


def run_env(**extra: str) -> dict[str, str]:
    """The test environment without SLURM variables (they would shard the run), plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    return env | {"OMP_WAIT_POLICY": "PASSIVE", "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline"} | extra


def run_medadv(args: Sequence[str], timeout: int = 300, **env: str) -> subprocess.CompletedProcess:
    """Run `medadv ARGS` under `timeout -s KILL`; fail with its output unless it exits 0."""
    command = ["timeout", "-s", "KILL", str(timeout), *medadv(*args)]
    result = subprocess.run(command, cwd=ROOT, env=run_env(**env), capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result
