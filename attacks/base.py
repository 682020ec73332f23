"""The attack protocol: the objective boundary, the result and trace, and the model-unchanged rule."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor, nn


@runtime_checkable
class Objective(Protocol):
    """The task boundary every attack is written against (see docs/architecture.md).

    ``model`` is the network the attack must leave unchanged. ``loss`` is per sample and is what an
    untargeted attack maximises; ``logits`` has the class dimension at 1: (B, K) for classification,
    (B, K, H, W) for segmentation, (B, K + 1, P) over proposals for detection.
    """

    model: nn.Module

    def forward(self, images: Tensor) -> Any: ...

    def loss(self, outputs: Any, target: Any) -> Tensor: ...

    def predict(self, outputs: Any) -> Any: ...

    def logits(self, outputs: Any) -> Tensor: ...

    def dense_target(self, outputs: Any, target: Any) -> Tensor: ...

    def divergence(self, outputs: Any, reference: Any) -> Tensor: ...


@dataclass
class AttackTrace:
    """Per-sample statistics of an attack's iterations (SMIA's Var and Cos), never image histories.

    ``update_cosine[b, t]`` is the cosine between the perturbation updates of iterations t and t + 1;
    ``variance`` is the variance of the final perturbation. Black-box attacks count ``queries``.
    """

    variance: Tensor
    update_cosine: Tensor
    update_variance: Tensor
    iterations: Tensor
    queries: Tensor

    def to(self, device: torch.device | str) -> AttackTrace:
        return AttackTrace(**{name: value.to(device) for name, value in self.__dict__.items()})


@dataclass
class AttackResult:
    """Adversarial images in [0, 1] and the trace of the iterations that made them."""

    adv_images: Tensor
    trace: AttackTrace
    extras: dict[str, Any] = field(default_factory=dict)

    def perturbation(self, images: Tensor) -> Tensor:
        return self.adv_images - images


class TraceRecorder:
    """Accumulates the trace from the perturbation after each iteration, in O(batch) memory."""

    def __init__(self, images: Tensor) -> None:
        self._batch = images.shape[0]
        self._device = images.device
        self._previous: Tensor = torch.zeros_like(images)
        self._previous_update: Tensor | None = None
        self._cosines: list[Tensor] = []
        self._variances: list[Tensor] = []
        self._queries = torch.zeros(self._batch, dtype=torch.long, device=self._device)
        self._iterations = torch.zeros(self._batch, dtype=torch.long, device=self._device)

    def step(self, perturbation: Tensor, active: Tensor | None = None) -> None:
        """Record one iteration; ``active`` (B,) bool marks the samples still being updated."""
        perturbation = perturbation.detach()
        update = (perturbation - self._previous).flatten(1)
        self._variances.append(update.var(dim=1, unbiased=False))
        if self._previous_update is not None:
            self._cosines.append(
                nn.functional.cosine_similarity(update, self._previous_update, dim=1, eps=1e-12)
            )
        self._previous_update = update
        self._previous = perturbation.clone()
        self._iterations += 1 if active is None else active.long()

    def add_queries(self, count: Tensor | int) -> None:
        self._queries += count

    def finish(self, perturbation: Tensor) -> AttackTrace:
        flat = perturbation.detach().flatten(1)
        empty = torch.zeros(self._batch, 0, device=self._device)
        return AttackTrace(
            variance=flat.var(dim=1, unbiased=False),
            update_cosine=torch.stack(self._cosines, dim=1) if self._cosines else empty,
            update_variance=torch.stack(self._variances, dim=1) if self._variances else empty,
            iterations=self._iterations.clone(),
            queries=self._queries.clone(),
        )


@contextlib.contextmanager
def frozen_model(model: nn.Module) -> Iterator[nn.Module]:
    """Eval mode and no parameter gradients while attacking; restores mode and flags on exit."""
    modes = {name: module.training for name, module in model.named_modules()}
    flags = {name: p.requires_grad for name, p in model.named_parameters()}
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    try:
        with torch.inference_mode(False), torch.enable_grad():
            yield model
    finally:
        for name, module in model.named_modules():
            module.training = modes[name]
        for name, p in model.named_parameters():
            p.requires_grad_(flags[name])


def input_gradient(objective: Objective, images: Tensor, target: Any, sign: float = 1.0) -> tuple[Tensor, Tensor]:
    """Gradient of ``sign * sum(loss)`` w.r.t. the input only, and the per-sample loss (detached)."""
    x = images.detach().clone().requires_grad_(True)
    loss = objective.loss(objective.forward(x), target)
    (grad,) = torch.autograd.grad(sign * loss.sum(), x)
    return grad.detach(), loss.detach()


def check_positive(name: str, value: float, allow_zero: bool = True) -> None:
    """Raise ValueError naming the argument when ``value`` is negative (or zero when not allowed)."""
    if value < 0 or (not allow_zero and value == 0):
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name} must be {bound}, got {value!r}")


def check_steps(name: str, value: int) -> None:
    """Raise ValueError naming the argument unless ``value`` is an integer >= 1."""
    if int(value) != value or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")


class Attack:
    """Base class: configured once, called on a batch; subclasses implement ``run``.

    ``__call__`` applies the model-unchanged rule, seeds a private generator, checks the input and
    clamps the output to [0, 1].
    """

    name: str = "attack"

    def __init__(self, seed: int = 0) -> None:
        self.seed = seed

    def __call__(self, objective: Objective, images: Tensor, target: Any) -> AttackResult:
        if images.dim() != 4:
            raise ValueError(f"images must be (B, C, H, W), got shape {tuple(images.shape)}")
        generator = torch.Generator(device=images.device).manual_seed(self.seed)
        clean = images.detach().clone()
        with frozen_model(objective.model):
            result = self.run(objective, clean, target, generator)
        result.adv_images = result.adv_images.detach().clamp(0.0, 1.0)
        return result

    def run(self, objective: Objective, images: Tensor, target: Any, generator: torch.Generator) -> AttackResult:
        raise NotImplementedError
