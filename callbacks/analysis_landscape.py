"""Loss landscapes around test samples (Ma et al. 2020, Fig. 7): the per-sample task loss on the plane
x + a * g + b * r, with g = sign(grad_x loss) the adversarial direction and r a random sign direction,
and the sharpness numbers read from it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from attacks.base import Objective


@dataclass(frozen=True)
class Landscape:
    """``losses[i, j, k]``: the loss of sample i at x + offsets[j] * g + offsets[k] * r (clamped to [0, 1]).
    Offsets are Linf distances, symmetric around 0 and with 0 in the middle."""

    offsets: Tensor
    losses: Tensor

    @property
    def centre(self) -> int:
        return len(self.offsets) // 2

    def along(self, direction: str) -> Tensor:
        """(N, points) losses along ``"adversarial"`` (g) or ``"random"`` (r), the other offset 0."""
        if direction == "adversarial":
            return self.losses[:, :, self.centre]
        if direction == "random":
            return self.losses[:, self.centre, :]
        raise ValueError(f"direction must be 'adversarial' or 'random', got {direction!r}")

    def sharpness(self, direction: str = "adversarial") -> float:
        """S = mean_i max_{0 <= t <= R} [L_i(x_i + t d) - L_i(x_i)]: the largest loss increase within the
        radius R along direction d, averaged over the samples."""
        curve = self.along(direction)
        rise = curve[:, self.centre:] - curve[:, self.centre:self.centre + 1]
        return float(rise.amax(dim=1).mean())


def sample_losses(objective: Objective, images: Tensor, target: Any) -> Tensor:
    """Per-sample task loss (N,) of ``images``, no graph kept."""
    with torch.no_grad():
        return objective.loss(objective.forward(images), target).float()


def gradient_sign(objective: Objective, images: Tensor, target: Any) -> Tensor:
    """g = sign(grad_x loss(x)): FGSM's direction, the steepest Linf ascent of the loss."""
    inputs = images.detach().clone().requires_grad_(True)
    (gradient,) = torch.autograd.grad(objective.loss(objective.forward(inputs), target).sum(), inputs)
    return gradient.sign()


def loss_landscape(
    objective: Objective, images: Tensor, target: Any, radius: float, points: int, seed: int = 0
) -> Landscape:
    """The loss on a ``points`` x ``points`` grid of Linf offsets in [-radius, radius] along the adversarial
    direction g and a random sign direction r (seeded). The model must be in eval mode with gradients on for
    the input (``attacks.base.frozen_model``)."""
    if points < 3 or points % 2 == 0:
        raise ValueError(f"points must be an odd number >= 3 (0 in the middle), got {points}")
    adversarial = gradient_sign(objective, images, target)
    generator = torch.Generator().manual_seed(seed)
    random = (torch.randint(0, 2, images.shape, generator=generator) * 2 - 1).to(images)
    offsets = radius * torch.arange(-(points // 2), points // 2 + 1) / (points // 2)  # exactly 0 in the middle
    steps = offsets.to(images).view(-1, *[1] * images.dim())  # (points, 1, ...): one grid row per forward pass
    rows = [
        sample_losses(objective, (images + a * adversarial + steps * random).clamp(0, 1).flatten(0, 1),
                      repeated(target, points)).view(points, len(images)).T
        for a in offsets.tolist()
    ]
    return Landscape(offsets, torch.stack(rows, dim=1).cpu())


def repeated(target: Any, times: int) -> Any:
    """The batch ``target`` (a tensor with the sample on dim 0, or a list of per-sample targets) ``times`` over,
    in the order of ``images`` stacked ``times`` over."""
    if isinstance(target, Tensor):
        return target.repeat(times, *[1] * (target.dim() - 1))
    return list(target) * times
