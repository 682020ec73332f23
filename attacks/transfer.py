"""Transfer (black-box) attacks: craft on a surrogate objective or an ensemble, evaluate on the target.

Liu et al. 2017 (Delving into transferable adversarial examples and black-box attacks): ensembles of
surrogates transfer better than single models.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from attacks.base import Attack, AttackResult, Objective, SampleRandom, check_target


class EnsembleObjective:
    """Weighted ensemble of classification or segmentation objectives (Liu et al. 2017 ensemble attack).

    Outputs are the members' outputs; ``loss`` and ``divergence`` are the weighted means of the members'
    per-sample values (Liu et al. fuse softmax outputs; a loss mean works for every task loss, as the
    loss ensemble of Dong et al. 2018), ``logits`` the weighted mean of their logits and ``predict`` its
    arg-max.
    """

    def __init__(self, objectives: Sequence[Objective], weights: Sequence[float] | None = None) -> None:
        if len(objectives) == 0:
            raise ValueError("objectives must hold at least one objective")
        weights = [1.0] * len(objectives) if weights is None else list(weights)
        if len(weights) != len(objectives):
            raise ValueError(f"weights must have one entry per objective ({len(objectives)}): {weights!r}")
        if any(w < 0 for w in weights) or sum(weights) <= 0:
            raise ValueError(f"weights must be >= 0 with a positive sum, got {weights!r}")
        self.objectives = list(objectives)
        self.weights = [w / sum(weights) for w in weights]
        self.model = nn.ModuleList([objective.model for objective in self.objectives])

    def _mean(self, values: list[Tensor]) -> Tensor:
        return sum(w * value for w, value in zip(self.weights, values, strict=True))

    def forward(self, images: Tensor) -> list[Any]:
        return [objective.forward(images) for objective in self.objectives]

    def loss(self, outputs: list[Any], target: Any) -> Tensor:
        return self._mean([o.loss(out, target) for o, out in zip(self.objectives, outputs, strict=True)])

    def logits(self, outputs: list[Any]) -> Tensor:
        return self._mean([o.logits(out) for o, out in zip(self.objectives, outputs, strict=True)])

    def predict(self, outputs: list[Any]) -> Tensor:
        return self.logits(outputs).argmax(dim=1)

    def dense_target(self, outputs: list[Any], target: Any) -> Tensor:
        return self.objectives[0].dense_target(outputs[0], target)

    def divergence(self, outputs: list[Any], reference: list[Any]) -> Tensor:
        members = zip(self.objectives, outputs, reference, strict=True)
        return self._mean([o.divergence(out, ref) for o, out, ref in members])

    def check_target(self, images: Tensor, target: Any) -> None:
        """Each member's check of ``target``."""
        for objective in self.objectives:
            check_target(objective, images, target)


class TransferAttack(Attack):
    """Black-box transfer attack: ``attack`` crafts on ``surrogate`` (one objective or an
    EnsembleObjective) and the result is returned for the objective it is called with.

    Called like any attack, ``transfer(target_objective, images, target)``: the target objective is never
    queried (queries 0); the trace's perturbation statistics are those of the crafting run, whose own
    query counts stay in ``extras["surrogate_queries"]``.
    """

    name = "transfer"
    access = "transfer"

    def __init__(self, attack: Attack, surrogate: Objective) -> None:
        if not isinstance(attack, Attack):
            raise ValueError(f"attack must be an Attack, got {type(attack).__name__}")
        super().__init__(attack.seed)
        self.attack = attack
        self.surrogate = surrogate

    def run(
        self, objective: Objective, images: Tensor, target: Any, random: SampleRandom
    ) -> AttackResult:
        crafted = self.attack(self.surrogate, images, target, ids=random.ids)
        trace = crafted.trace
        surrogate_queries = trace.queries
        trace.queries = torch.zeros_like(surrogate_queries)
        extras = {**crafted.extras, "surrogate_queries": surrogate_queries}
        return AttackResult(crafted.adv_images, trace, extras)
