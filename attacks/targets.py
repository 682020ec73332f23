"""Targeted modes: which label an attack pushes towards, chosen per sample (or per pixel) from the logits.

Targeted modes need an objective whose ``loss`` takes dense labels (classification (B,), segmentation
(B, H, W)); an untargeted attack passes the caller's target through unchanged.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import torch
from torch import Tensor

from attacks.base import Objective, SampleRandom

TARGET_MODES = ("untargeted", "given", "least_likely", "random")


class TargetMode:
    """One of ``TARGET_MODES``: "given" uses the caller's target as the goal label, "least_likely" the
    lowest clean logit, "random" a uniformly drawn class other than the true one."""

    def __init__(self, mode: str = "untargeted") -> None:
        if mode not in TARGET_MODES:
            raise ValueError(f"target_mode must be one of {TARGET_MODES}, got {mode!r}")
        self.mode = mode

    @property
    def targeted(self) -> bool:
        return self.mode != "untargeted"

    @property
    def sign(self) -> float:
        """+1 when the attack ascends the loss (untargeted), -1 when it descends towards a goal."""
        return -1.0 if self.targeted else 1.0

    def resolve(self, objective: Objective, images: Tensor, target: Any, random: SampleRandom) -> Any:
        """The labels the attack's loss is taken against: the caller's target or the chosen goal."""
        if self.mode in ("untargeted", "given"):
            return target
        with torch.no_grad():
            outputs = objective.forward(images)
            logits = objective.logits(outputs)
        if self.mode == "least_likely":
            return logits.argmin(dim=1)
        true = objective.dense_target(outputs, target)
        other = random.draw(partial(torch.randint, 0, logits.shape[1] - 1), true.shape[1:], dtype=true.dtype)
        return other + (other >= true).to(true.dtype)
