"""What the score-based black-box attacks (Square, one-pixel) share: querying a classifier's scores and
testing success (also the gradient loop's ``early_stop``)."""

from __future__ import annotations

import torch
from torch import Tensor

from attacks.base import Objective
from attacks.targets import TargetMode


def require_class_logits(logits: Tensor, needed_by: str) -> Tensor:
    """``logits`` when they are classification logits (B, K); a ValueError naming ``needed_by`` otherwise."""
    if logits.dim() != 2:
        raise ValueError(f"{needed_by} needs classification logits (B, K), got shape {tuple(logits.shape)}")
    return logits


@torch.no_grad()
def class_logits(objective: Objective, images: Tensor) -> Tensor:
    """Query the model: logits (B, K) of a classification objective, without a graph."""
    return require_class_logits(objective.logits(objective.forward(images)), "a score-based attack")


def succeeded(logits: Tensor, goal: Tensor, targeted: bool) -> Tensor:
    """(B,) bool: the predicted class differs from ``goal`` (untargeted) or equals it (targeted)."""
    predicted = logits.argmax(dim=1)
    return predicted == goal if targeted else predicted != goal


def goal_queries(targets: TargetMode) -> int:
    """Model queries spent choosing the goal labels: one for the modes read from the clean logits."""
    return int(targets.mode in ("least_likely", "random"))
