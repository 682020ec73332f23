"""An attack that takes half a second per batch without using the CPU, and that waits, while the file named
by ``$MEDADV_TEST_GATE`` is missing, before it starts: cells that several workers can be seen to hold at
once and that can be interrupted mid-way, for the lease and SIGTERM tests. Named in a config by import path."""

from __future__ import annotations

import os
import time
from pathlib import Path

from torch import Tensor

from attacks.base import AttackResult, Objective, SampleRandom
from attacks.gradient import FGSM

GATE_VARIABLE = "MEDADV_TEST_GATE"
SECONDS = 0.5
GATE_TIMEOUT = 300.0  # a gate never opened ends the wait, not the test run


def wait_for_gate() -> None:
    gate = os.environ.get(GATE_VARIABLE)
    deadline = time.monotonic() + GATE_TIMEOUT
    while gate and not Path(gate).exists() and time.monotonic() < deadline:
        time.sleep(0.05)


class SlowFGSM(FGSM):
    """FGSM after the gate opens and half a second more."""

    def run(self, objective: Objective, images: Tensor, target: Tensor, random: SampleRandom) -> AttackResult:
        wait_for_gate()
        time.sleep(SECONDS)
        return super().run(objective, images, target, random)
