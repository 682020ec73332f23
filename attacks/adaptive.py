"""Adaptive attacks on defended models as objective wrappers (Athalye, Carlini & Wagner, ICML 2018,
"Obfuscated gradients give a false sense of security"): BPDA (Sec. 4.1) for non-differentiable input
transformations and EOT (Sec. 4.3) for randomised models. Each wraps any ``Objective`` and is one, so every
attack runs on it unchanged: ``PGD(eps=8 / 255)(BPDA(objective), images, labels)``."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor, nn

from attacks.base import Objective, check_steps
from attacks.transfer import EnsembleObjective
from attacks.wrappers import ObjectiveWrapper

EOT_DRAWS = 20  # AutoAttack's rand version
Approximation = Callable[[Tensor], Tensor]


@runtime_checkable
class InputTransformed(Protocol):
    """A model computing ``network(transform(x))``: an input-transformation defence, split where BPDA
    replaces f(g(x)) by f(x) on the backward pass (Athalye et al. 2018, Sec. 4.1). ``transform`` is a
    settable module attribute; ``BPDA`` swaps it for its straight-through version while it runs."""

    network: nn.Module
    transform: nn.Module


class StraightThrough(nn.Module):
    """BPDA's substitute for ``transform`` T: forward T(x), backward d g(x) / dx with g the identity
    (Athalye et al. 2018, Sec. 4.1) or ``approximation``; computed as T(x) + (g(x) - g(x)), the bracket
    detached in its second term, so the forward value is T(x) exactly."""

    def __init__(self, transform: nn.Module, approximation: Approximation | None = None) -> None:
        super().__init__()
        self.transform = transform
        self.approximation = approximation

    def forward(self, images: Tensor) -> Tensor:
        with torch.no_grad():
            transformed = self.transform(images)
        approximated = images if self.approximation is None else self.approximation(images)
        return transformed + (approximated - approximated.detach())


@contextlib.contextmanager
def straight_through(defences: Sequence[InputTransformed], approximation: Approximation | None) -> Iterator[None]:
    """Each defence's ``transform`` replaced by its ``StraightThrough`` inside the block, restored on exit."""
    originals = [defence.transform for defence in defences]
    try:
        for defence, transform in zip(defences, originals, strict=True):
            defence.transform = StraightThrough(transform, approximation)
        yield
    finally:
        for defence, transform in zip(defences, originals, strict=True):
            defence.transform = transform


class BPDA(ObjectiveWrapper):
    """Backward Pass Differentiable Approximation (Athalye et al. 2018, Sec. 4.1): the same outputs as
    ``objective``, with the gradient of every input-transformation defence in ``objective.model``
    (``InputTransformed``) taken as that of the identity, or of ``approximation`` g ~ T."""

    def __init__(self, objective: Objective, approximation: Approximation | None = None) -> None:
        super().__init__(objective)
        self.defences = [module for module in objective.model.modules() if isinstance(module, InputTransformed)]
        if not self.defences:
            raise ValueError(
                f"objective.model ({type(objective.model).__name__}) holds no input-transformation defence "
                "(a module with `network` and `transform`): BPDA has nothing to approximate"
            )
        self.approximation = approximation

    def forward(self, images: Tensor) -> Any:
        with straight_through(self.defences, self.approximation):
            return self.objective.forward(images)


class EOT(EnsembleObjective):
    """Expectation over Transformation (Athalye et al. 2018, Sec. 4.3; Athalye, Engstrom et al. 2018,
    "Synthesizing robust adversarial examples", Eq. 1-2): ``draws`` forward passes of a randomised model;
    the loss is the mean of their losses, so its gradient is the mean of their gradients, an unbiased
    estimate of grad E_t[loss(f(t(x)))]; ``logits`` is the mean of their logits, ``predict`` its arg-max."""

    def __init__(self, objective: Objective, draws: int = EOT_DRAWS) -> None:
        check_steps("draws", draws)
        super().__init__([objective] * int(draws))
        self.draws = int(draws)
        self.model = objective.model
