"""Shared helpers of the minimal-norm attack tests: the norms by name, their duals, perturbation sizes and
predictions."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

P = {"l1": 1.0, "l2": 2.0, "linf": math.inf}
DUAL = {"l1": math.inf, "l2": 2.0, "linf": 1.0}


def sizes(adv: Tensor, images: Tensor, norm: str) -> Tensor:
    """Per-sample (B,) size of ``adv - images`` in the norm named ``norm``."""
    return (adv - images).flatten(1).norm(p=P[norm], dim=1)


def predictions(objective: Any, images: Tensor) -> Tensor:
    """The objective's predictions on ``images``, without gradients."""
    with torch.no_grad():
        return objective.predict(objective.forward(images))
