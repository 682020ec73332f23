"""The attack protocol: the objective boundary, the result and trace, and the model-unchanged rule."""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor, nn

COSINE_EPS = 1e-12  # floor on the update norms in the trace's cosines (torch's cosine_similarity eps)


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


def flat_variance(flat: Tensor) -> Tensor:
    """Per-row population variance of a (B, N) tensor: two passes (mean, centred norm), no Welford loop."""
    centred = flat - flat.mean(dim=1, keepdim=True)
    return torch.linalg.vector_norm(centred, dim=1).square() / flat.shape[1]


class TraceRecorder:
    """Accumulates the trace from the perturbation after each iteration, in O(batch) memory.

    Per step it makes one pass for the update, two for its variance, one for its norm and one for the
    dot product with the previous update, whose norm is kept from the step before.
    """

    def __init__(self, images: Tensor) -> None:
        self._batch = images.shape[0]
        self._device = images.device
        self._previous: Tensor | None = None
        self._previous_update: Tensor | None = None
        self._previous_norm: Tensor | None = None
        self._cosines: list[Tensor] = []
        self._variances: list[Tensor] = []
        self._queries = torch.zeros(self._batch, dtype=torch.long, device=self._device)
        self._iterations = torch.zeros(self._batch, dtype=torch.long, device=self._device)

    def step(self, perturbation: Tensor, active: Tensor | None = None) -> None:
        """Record one iteration; ``active`` (B,) bool marks the samples still being updated.

        The recorder keeps ``perturbation`` (not a copy) until the next step: do not modify it in place.
        """
        perturbation = perturbation.detach()
        update = (perturbation if self._previous is None else perturbation - self._previous).flatten(1)
        norm = torch.linalg.vector_norm(update, dim=1)
        self._variances.append(flat_variance(update))
        if self._previous_update is not None:
            dot = torch.linalg.vecdot(update, self._previous_update)
            self._cosines.append(dot / (norm.clamp_min(COSINE_EPS) * self._previous_norm.clamp_min(COSINE_EPS)))
        self._previous, self._previous_update, self._previous_norm = perturbation, update, norm
        self._iterations += 1 if active is None else active.long()

    def add_queries(self, count: Tensor | int) -> None:
        self._queries += count

    def finish(self, perturbation: Tensor) -> AttackTrace:
        empty = torch.zeros(self._batch, 0, device=self._device)
        return AttackTrace(
            variance=flat_variance(perturbation.detach().flatten(1)),
            update_cosine=torch.stack(self._cosines, dim=1) if self._cosines else empty,
            update_variance=torch.stack(self._variances, dim=1) if self._variances else empty,
            iterations=self._iterations.clone(),
            queries=self._queries.clone(),
        )


Sampler = Callable[..., Tensor]
"""A torch sampling function called as ``sampler(shape, generator=..., device=..., **kwargs)``: torch.rand,
torch.randn, or ``functools.partial(torch.randint, low, high)``."""


def sample_seed(seed: int, sample_id: str) -> int:
    """A 63-bit generator seed from the attack seed and a sample id, the same in every process (SHA-256,
    not Python's salted ``hash``)."""
    digest = hashlib.sha256(f"{seed}/{sample_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


class SampleRandom:
    """Every random draw of one attack call, made per sample.

    Without ``ids`` one generator seeded with the attack seed serves the batch on its device (a sample's
    draws then depend on its batch). With ``ids`` sample i draws from its own CPU generator seeded from
    (seed, ids[i]) and the draws move to the batch's device, so a sample gets the same draws alone, in any
    batch, on any DDP rank and on any device.
    """

    def __init__(
        self, seed: int, batch: int, device: torch.device | str = "cpu", ids: Sequence[str] | None = None
    ) -> None:
        if ids is not None and len(ids) != batch:
            raise ValueError(f"ids must name every image: got {len(ids)} ids for {batch} images")
        self.ids = None if ids is None else list(ids)
        self.batch = batch
        self.device = torch.device(device)
        self._generator = torch.Generator(device=self.device).manual_seed(seed)
        self._sample_generators = [torch.Generator().manual_seed(sample_seed(seed, i)) for i in self.ids or []]

    def draw(self, sampler: Sampler, shape: Sequence[int], **kwargs: Any) -> Tensor:
        """(B, *shape): an independent draw of ``shape`` for every sample."""
        if self.ids is None:
            return sampler((self.batch, *shape), generator=self._generator, device=self.device, **kwargs)
        return self.each(lambda generator, device: sampler(tuple(shape), generator=generator, device=device, **kwargs))

    def shared(self, sampler: Sampler, shape: Sequence[int], **kwargs: Any) -> Tensor:
        """Without ids one draw (1, *shape) that the whole batch shares; with ids (B, *shape), one per sample."""
        if self.ids is None:
            return sampler((1, *shape), generator=self._generator, device=self.device, **kwargs)
        return self.draw(sampler, shape, **kwargs)

    def each(self, draw: Callable[[torch.Generator, torch.device], Tensor]) -> Tensor:
        """(B, ...) stacked from ``draw(generator, device)`` called once per sample, in batch order."""
        if self.ids is None:
            return torch.stack([draw(self._generator, self.device) for _ in range(self.batch)])
        cpu = torch.device("cpu")
        return torch.stack([draw(generator, cpu) for generator in self._sample_generators]).to(self.device)


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

    ``__call__`` applies the model-unchanged rule, seeds the call's random draws (per sample when the
    samples' ``ids`` are given, see ``SampleRandom``), checks the input and clamps the output to [0, 1].
    """

    name: str = "attack"

    def __init__(self, seed: int = 0) -> None:
        self.seed = seed

    def __call__(
        self, objective: Objective, images: Tensor, target: Any, ids: Sequence[str] | None = None
    ) -> AttackResult:
        if images.dim() != 4:
            raise ValueError(f"images must be (B, C, H, W), got shape {tuple(images.shape)}")
        random = SampleRandom(self.seed, len(images), images.device, ids)
        clean = images.detach().clone()
        with frozen_model(objective.model):
            result = self.run(objective, clean, target, random)
        result.adv_images = result.adv_images.detach().clamp(0.0, 1.0)
        return result

    def run(self, objective: Objective, images: Tensor, target: Any, random: SampleRandom) -> AttackResult:
        raise NotImplementedError
