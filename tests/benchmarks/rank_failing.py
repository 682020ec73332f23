"""An attack that fails on rank 1 of a multi-process run only: the runner test's stand-in for an error on
one GPU (out of memory, a bad sample in one rank's share), named in a config by its import path."""

from __future__ import annotations

import torch
from torch import Tensor

from attacks.base import AttackResult, Objective, SampleRandom
from attacks.gradient import FGSM


class FailsOnRankOne(FGSM):
    """FGSM, except that rank 1 of an initialised process group raises."""

    def run(self, objective: Objective, images: Tensor, target: Tensor, random: SampleRandom) -> AttackResult:
        if torch.distributed.is_initialized() and torch.distributed.get_rank() == 1:
            raise RuntimeError("injected failure on rank 1")
        return super().run(objective, images, target, random)
