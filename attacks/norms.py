"""Threat models as small strategies: random start, step normalisation and projection per norm.

The iterative gradient loop (``attacks.gradient``) is written once against this interface, as in
foolbox's gradient_descent_base; every tensor is (B, ...) and every norm is taken per sample.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch
from torch import Tensor

from attacks.base import SampleRandom

TINY = 1e-12


def per_sample(values: Tensor, like: Tensor) -> Tensor:
    """Reshape (B,) values to broadcast against a (B, ...) tensor."""
    return values.view(-1, *([1] * (like.dim() - 1)))


class Norm(ABC):
    """An Lp threat model of radius eps around the clean image."""

    name: str

    @abstractmethod
    def size(self, delta: Tensor) -> Tensor:
        """Per-sample norm (B,) of a perturbation."""

    @abstractmethod
    def random_start(self, images: Tensor, eps: float, random: SampleRandom) -> Tensor:
        """A random perturbation inside the eps-ball."""

    @abstractmethod
    def normalise_step(self, gradient: Tensor) -> Tensor:
        """The steepest-ascent direction of unit norm for this norm (sign for Linf)."""

    @abstractmethod
    def project(self, delta: Tensor, eps: float) -> Tensor:
        """Project a perturbation onto the eps-ball."""


class Linf(Norm):
    """Max-norm ball: uniform start, sign steps, elementwise clipping."""

    name = "linf"

    def size(self, delta: Tensor) -> Tensor:
        return delta.flatten(1).abs().amax(dim=1)

    def random_start(self, images: Tensor, eps: float, random: SampleRandom) -> Tensor:
        noise = random.draw(torch.rand, images.shape[1:], dtype=images.dtype)
        return (2 * noise - 1) * eps

    def normalise_step(self, gradient: Tensor) -> Tensor:
        return gradient.sign()

    def project(self, delta: Tensor, eps: float) -> Tensor:
        return delta.clamp(-eps, eps)


class L2(Norm):
    """Euclidean ball: start uniform in the ball, unit-L2 steps, radial projection."""

    name = "l2"

    def size(self, delta: Tensor) -> Tensor:
        return delta.flatten(1).norm(dim=1)

    def random_start(self, images: Tensor, eps: float, random: SampleRandom) -> Tensor:
        direction = random.draw(torch.randn, images.shape[1:], dtype=images.dtype)
        dims = direction[0].numel()
        uniform = random.draw(torch.rand, (), dtype=images.dtype)
        radius = eps * uniform ** (1.0 / dims)
        return self.normalise_step(direction) * per_sample(radius, images)

    def normalise_step(self, gradient: Tensor) -> Tensor:
        return gradient / per_sample(self.size(gradient).clamp_min(TINY), gradient)

    def project(self, delta: Tensor, eps: float) -> Tensor:
        factor = (eps / self.size(delta).clamp_min(TINY)).clamp(max=1.0)
        return delta * per_sample(factor, delta)


NORMS: dict[str, type[Norm]] = {"linf": Linf, "l2": L2}


def norm_by_name(name: str) -> Norm:
    """The threat model called ``name`` ("linf" or "l2"); ValueError naming ``norm`` otherwise."""
    if not isinstance(name, str) or name not in NORMS:
        raise ValueError(f"norm must be one of {sorted(NORMS)}, got {name!r}")
    return NORMS[name]()
