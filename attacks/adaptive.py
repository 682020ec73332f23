"""Adaptive attacks on defended models as objective wrappers (Athalye, Carlini & Wagner, ICML 2018,
"Obfuscated gradients give a false sense of security"): BPDA (Sec. 4.1) for non-differentiable input
transformations and EOT (Sec. 4.3) for randomised models. Each wraps any ``Objective`` and is one, so every
attack runs on it unchanged: ``PGD(eps=8 / 255)(BPDA(objective), images, labels)``. ``AdaptiveAttack`` runs
an attack on such a wrapper (what a config's ``adaptive:`` key builds); ``DetectorAware`` adds a detector's
score to the loss (Carlini & Wagner 2017), for attacks on adversarial-example detectors."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor, nn

from attacks.base import Attack, AttackResult, Objective, SampleRandom, check_positive, check_steps
from attacks.cw import class_margin, margin_loss
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


ADAPTIVE_METHODS = ("bpda", "eot", "bpda_eot")


class AdaptiveAttack(Attack):
    """``attack`` run on BPDA(objective), EOT(objective, ``draws``) or EOT(BPDA(objective), ``draws``)
    (Athalye et al. 2018, Sec. 4.1 and 4.3; BPDA inside EOT for randomised non-differentiable transforms,
    Sec. 5.3.2). It reports the wrapped attack's name, access and settings plus ``adaptive`` (and
    ``draws``), so an adaptive cell carries the same budget and steps as its non-adaptive twin."""

    def __init__(self, attack: Attack, method: str = "bpda", draws: int = EOT_DRAWS) -> None:
        if not isinstance(attack, Attack):
            raise ValueError(f"attack must be an Attack, got {type(attack).__name__}")
        if method not in ADAPTIVE_METHODS:
            raise ValueError(f"adaptive must be one of {ADAPTIVE_METHODS}, got {method!r}")
        check_steps("draws", draws)
        super().__init__(attack.seed)
        self.attack = attack
        self.method = method
        self.draws = int(draws)
        self.name = attack.name
        self.access = attack.access

    @property
    def settings(self) -> dict[str, Any]:
        draws = {"draws": self.draws} if "eot" in self.method else {}
        return {**self.attack.settings, "adaptive": self.method, **draws}

    def wrapped(self, objective: Objective) -> Objective:
        """The objective the wrapped attack sees."""
        if "bpda" in self.method:
            objective = BPDA(objective)
        return EOT(objective, self.draws) if "eot" in self.method else objective

    def run(self, objective: Objective, images: Tensor, target: Any, random: SampleRandom) -> AttackResult:
        return self.attack(self.wrapped(objective), images, target, ids=random.ids)


@dataclass
class Scored:
    """The wrapped objective's outputs and the detector's score of the same images."""

    outputs: Any
    score: Tensor


class DetectorAware(ObjectiveWrapper):
    """Misclassify and evade a detector together (Carlini & Wagner, AISec 2017, "Adversarial examples are not
    easily detected", Sec. 4-5): they minimise f(x) + lambda s(x), f their margin loss max(z_y - max_{j != y}
    z_j, -kappa) (C&W 2017 S&P, f_6) and s(x) the detector's differentiable score (higher: more
    adversarial); an attack here maximises the negation, -f(x) - ``weight`` s(x). The margin, unlike cross
    entropy, keeps a gradient of the detector term's scale while a sample is still classified correctly,
    and none once it is misclassified by ``kappa``: from there only the detector is pushed down.
    Classification objectives (logits (B, K))."""

    def __init__(
        self, objective: Objective, score: Callable[[Tensor], Tensor], weight: float = 1.0, kappa: float = 0.0
    ) -> None:
        check_positive("weight", weight)
        check_positive("kappa", kappa)
        super().__init__(objective)
        self.score = score
        self.weight = float(weight)
        self.kappa = float(kappa)

    def forward(self, images: Tensor) -> Scored:
        return Scored(self.objective.forward(images), self.score(images))

    def loss(self, outputs: Scored, target: Any) -> Tensor:
        logits = self.objective.logits(outputs.outputs)
        misclassification = -margin_loss(class_margin(logits, target), self.kappa)
        return misclassification - self.weight * outputs.score.to(logits.dtype)

    def predict(self, outputs: Scored) -> Any:
        return self.objective.predict(outputs.outputs)

    def logits(self, outputs: Scored) -> Tensor:
        return self.objective.logits(outputs.outputs)

    def dense_target(self, outputs: Scored, target: Any) -> Tensor:
        return self.objective.dense_target(outputs.outputs, target)

    def divergence(self, outputs: Scored, reference: Scored) -> Tensor:
        return self.objective.divergence(outputs.outputs, reference.outputs)
