"""Objective wrappers: change how an objective's ``forward`` runs (precision, compilation) and hand every
other member of the task boundary (``attacks.base.Objective``) to the wrapped objective."""

from __future__ import annotations

from typing import Any

from torch import Tensor

from attacks.base import Objective, check_target


class ObjectiveWrapper:
    """An objective that runs ``forward`` its own way; ``model``, ``loss``, ``predict``, ``logits``,
    ``dense_target``, ``divergence`` and ``check_target`` are the wrapped objective's."""

    def __init__(self, objective: Objective) -> None:
        self.objective = objective
        self.model = objective.model

    def forward(self, images: Tensor) -> Any:
        return self.objective.forward(images)

    def loss(self, outputs: Any, target: Any) -> Tensor:
        return self.objective.loss(outputs, target)

    def predict(self, outputs: Any) -> Any:
        return self.objective.predict(outputs)

    def logits(self, outputs: Any) -> Tensor:
        return self.objective.logits(outputs)

    def dense_target(self, outputs: Any, target: Any) -> Tensor:
        return self.objective.dense_target(outputs, target)

    def divergence(self, outputs: Any, reference: Any) -> Tensor:
        return self.objective.divergence(outputs, reference)

    def check_target(self, images: Tensor, target: Any) -> None:
        check_target(self.objective, images, target)
