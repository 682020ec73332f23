"""Real Lightning DDP (2 CPU processes, gloo) gives exactly the metrics of one process, on a test split
whose size is not divisible by 2 (the padded-sampler trap)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest

ROOT = Path(__file__).resolve().parents[2]
TIMING = ("seconds_per_image",)


def run_job(checkpoint: Path, devices: int, output: Path) -> dict:
    command = [
        "timeout", "-s", "KILL", "600", sys.executable, "-m", "tests.callbacks.ddp_eval",
        "--checkpoint", str(checkpoint), "--devices", str(devices), "--output", str(output),
    ]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    completed = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    assert completed.returncode == 0, completed.stderr[-3000:]
    return json.loads(output.read_text())


@pytest.mark.slow
def test_two_processes_equal_one(fitted_classifier, tmp_path):
    module, _ = fitted_classifier
    checkpoint = tmp_path / "classifier.ckpt"
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.strategy.connect(module)
    trainer.save_checkpoint(checkpoint)

    single = run_job(checkpoint, 1, tmp_path / "one.json")
    double = run_job(checkpoint, 2, tmp_path / "two.json")

    assert single["test_size"] % 2 == 1
    compared = {k: v for k, v in single["metrics"].items() if not k.endswith(TIMING)}
    assert compared.keys() == {k for k in double["metrics"] if not k.endswith(TIMING)}
    robust = ("robust/adv/pgd/8_255/accuracy", "robust/adv/pgd/8_255/linf_ci_low")  # robust-accuracy mode
    assert {"adv/pgd/8_255/accuracy", *robust} <= set(compared)
    for name, value in compared.items():
        assert double["metrics"][name] == pytest.approx(value, abs=1e-6, nan_ok=True), name
