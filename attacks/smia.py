"""Stabilized Medical Image Attack (Qi et al., "Stabilized Medical Image Attacks", ICLR 2021, Eq. 1-4)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from attacks.base import Objective, check_positive
from attacks.gradient import GradientAttack
from attacks.kernels import GaussianBlur


class SMIA(GradientAttack):
    """SMIA: the projected-gradient loop of ``attacks.gradient`` ascending the deviation loss alone at
    the first step (Eq. 1-2), then L(f(x~), Y) - weight * L(f(x~), f(x~ + eta')) with
    eta' = W * eta - eta, i.e. x~ + eta' = x + W * eta, W a centred Gaussian (Eq. 3-4).

    The reference f(x + W * eta) is detached (``objective.divergence``): it fills the label slot of
    L in Eq. 4, like Y, and to second order (Eq. 5) the resulting step moves x~ towards x + W * eta,
    shrinking eta' as the KL analysis asks. ``stabilisation_weight`` is the paper's alpha; 0 gives
    the DEV-only ablation, identical to BIM. Paper: 10 iterations, alpha 1. ``kernel_size`` and ``sigma``
    are W's (not the gradient smoothing of the TI attacks).
    """

    name = "smia"
    defaults = {"eps": 0.05}
    fixed = {"target_mode": "untargeted"}

    def __init__(
        self, stabilisation_weight: float = 1.0, kernel_size: int = 5, sigma: float | None = 1.0, **options: Any
    ) -> None:
        super().__init__(**options)
        check_positive("stabilisation_weight", stabilisation_weight)
        self.stabilisation_weight = float(stabilisation_weight)
        self.stabiliser = GaussianBlur(kernel_size, sigma)

    def step_loss(
        self, objective: Objective, outputs: Any, adv: Tensor, images: Tensor, target: Any, step: int
    ) -> Tensor:
        deviation = objective.loss(outputs, target)
        if step == 0:
            return deviation
        with torch.no_grad():
            reference = objective.forward((images + self.stabiliser(adv - images)).clamp(0.0, 1.0))
        return deviation - self.stabilisation_weight * objective.divergence(outputs, reference)

    def tracked_loss(self, objective: Objective, outputs: Any, step_loss: Tensor, goal: Any) -> Tensor:
        """The deviation loss alone: the stabilisation term joins only from step 1, so the full step loss of
        step 0 is not comparable with the later ones."""
        with torch.no_grad():
            return objective.loss(outputs, goal)
