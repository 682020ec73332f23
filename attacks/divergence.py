"""Label-free attacks on the divergence from the clean prediction: TRADES' inner maximisation
(Zhang et al., "Theoretically Principled Trade-off between Robustness and Accuracy", ICML 2019)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from attacks.base import AttackResult, Objective, SampleRandom, check_positive
from attacks.gradient import PGD

TRADES_START_STD = 0.001  # Zhang et al. 2019, Alg. 1: x' = x + 0.001 N(0, I)


class DivergenceObjective:
    """``objective`` whose loss is the divergence from a reference prediction: the target an attack passes
    is the reference outputs f(x), and ``loss(f(x'), f(x))`` is ``objective.divergence(f(x'), f(x))``.

    For classifiers and segmenters that is the cross entropy of f(x') against softmax f(x); it exceeds
    KL(f(x) || f(x')) by the entropy of f(x), a constant in x', so both have the same input gradient.
    """

    def __init__(self, objective: Objective) -> None:
        self.objective = objective
        self.model = objective.model

    def forward(self, images: Tensor) -> Any:
        return self.objective.forward(images)

    def loss(self, outputs: Any, reference: Any) -> Tensor:
        return self.objective.divergence(outputs, reference)

    def predict(self, outputs: Any) -> Any:
        return self.objective.predict(outputs)

    def logits(self, outputs: Any) -> Tensor:
        return self.objective.logits(outputs)

    def dense_target(self, outputs: Any, reference: Any) -> Tensor:
        """The reference's predicted class at every position."""
        return self.objective.logits(reference).argmax(dim=1)

    def divergence(self, outputs: Any, reference: Any) -> Tensor:
        return self.objective.divergence(outputs, reference)


class KLDivergencePGD(PGD):
    """PGD ascending KL(f(x) || f(x')) over the eps-ball, the inner maximisation of TRADES (Zhang et al.
    2019, Eq. 5 and Alg. 1): no label is used, the clean prediction f(x) is the reference.

    At x' = x the divergence is minimal and its gradient zero, so the iterate starts at
    x + ``start_std`` * N(0, I) (0.001 in the paper), projected onto the ball, not at a uniform draw.
    """

    name = "kl_pgd"
    fixed = {"random_start": True, "target_mode": "untargeted", "early_stop": False}

    def __init__(self, start_std: float = TRADES_START_STD, **options: Any) -> None:
        super().__init__(**options)
        check_positive("start_std", start_std, allow_zero=False)
        self.start_std = float(start_std)

    def initial_point(self, images: Tensor, random: SampleRandom) -> Tensor:
        noise = self.start_std * random.draw(torch.randn, images.shape[1:], dtype=images.dtype)
        return (images + self.norm.project(noise, self.eps)).clamp(0.0, 1.0)

    def run(self, objective: Objective, images: Tensor, target: Any, random: SampleRandom) -> AttackResult:
        """The gradient loop on ``DivergenceObjective(objective)`` against f(x); ``target`` is not used."""
        with torch.no_grad():
            reference = objective.forward(images)
        return super().run(DivergenceObjective(objective), images, reference, random)
