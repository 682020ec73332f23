"""SegPGD (Gu, Zhao, Tresp, Torr, ECCV 2022, "SegPGD: An effective and efficient adversarial attack for evaluating
and boosting segmentation robustness"): PGD on a loss that moves its weight from the correctly to the wrongly
classified pixels over the iterations."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from attacks.base import Objective
from attacks.gradient import PGD
from attacks.segmentation_losses import pixel_scores, segpgd_loss


class SegPGD(PGD):
    """SegPGD (Gu et al. 2022, Algorithm 1): PGD (random start, sign or unit-L2 steps, projection; ``norm``
    "linf" or "l2") ascending at step t = 1..T the loss
    (1 - lambda(t))/HW sum_{correct} CE_j + lambda(t)/HW sum_{wrong} CE_k with lambda(t) = (t - 1)/(2T).

    The correct/wrong split is read from each step's own prediction. Untargeted only (the paper defines no
    targeted form). Written against ``objective.logits``/``dense_target``: a classifier is one position, whose
    cross entropy is scaled by 1 - lambda while correct and lambda once wrong (so a sample already wrong does not
    move at the first step, where lambda = 0). Step size as PGD's.
    """

    name = "segpgd"
    defaults = {"eps": 8 / 255}
    fixed = {"target_mode": "untargeted"}

    def step_loss(
        self, objective: Objective, outputs: Any, adv: Tensor, images: Tensor, target: Any, step: int
    ) -> Tensor:
        return segpgd_loss(pixel_scores(objective, outputs, target), step, self.steps)

    def tracked_loss(self, objective: Objective, outputs: Any, step_loss: Tensor, goal: Any) -> Tensor:
        """The task loss: lambda(t) changes the step loss's form at every step."""
        with torch.no_grad():
            return objective.loss(outputs, goal)
