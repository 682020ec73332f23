"""CosPGD (Agnihotri, Jung, Keuper, ICML 2024, "CosPGD: an efficient white-box adversarial attack for pixel-wise
prediction tasks"): PGD on the pixel-wise cross entropy weighted by the cosine between prediction and label."""

from __future__ import annotations

from typing import Any

from torch import Tensor

from attacks.base import Objective
from attacks.gradient import PGD
from attacks.segmentation_losses import cospgd_loss, pixel_scores


class CosPGD(PGD):
    """CosPGD (Agnihotri et al. 2024, Algorithm 1): PGD (random start, sign or unit-L2 steps, projection;
    ``norm`` "linf" or "l2") on L_cos = (1/HW) sum_j cos(softmax(z_j), one_hot(y_j)) CE_j.

    Untargeted it ascends L_cos, so pixels the model still gets right weigh most. With a ``target_mode``
    (``attacks.targets``: "given", "least_likely", "random") it descends (1/HW) sum_j (1 - cos_j) CE(z_j, goal_j)
    towards the goal mask, so pixels still far from their goal weigh most. The cosine is detached, as in the
    authors' code. A classifier is one position. Step size as PGD's.
    """

    name = "cospgd"
    defaults = {"eps": 8 / 255}

    def step_loss(
        self, objective: Objective, outputs: Any, adv: Tensor, images: Tensor, target: Any, step: int
    ) -> Tensor:
        scores = pixel_scores(objective, outputs, target)
        return self.targets.sign * cospgd_loss(scores, targeted=self.targets.targeted)
