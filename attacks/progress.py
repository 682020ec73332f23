"""The iterate a minimal-norm dense attack returns: the smallest one that reached its goal, else the one that came
closest (the segmentation attacks' goal is a fraction of pixels, so progress short of it still counts)."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from attacks.norms import per_sample


class BestIterate:
    """Per sample: the smallest iterate (by ``size``) that reached the goal, with its size in ``norms`` (inf while
    none has); until one has, the iterate with the largest ``progress`` (a fraction of pixels). Ties go to the
    later iterate."""

    def __init__(self, images: Tensor) -> None:
        self.adv = images.clone()
        self.norms = torch.full((len(images),), math.inf, device=images.device)
        self.progress = torch.full((len(images),), -1.0, device=images.device)

    @property
    def found(self) -> Tensor:
        """(B,) bool: the goal was reached at some iterate."""
        return torch.isfinite(self.norms)

    def update(self, iterate: Tensor, size: Tensor, progress: Tensor, reached: Tensor) -> None:
        """Consider one iterate (B, ...) with its (B,) size, progress and whether it reached the goal."""
        smaller = reached & (size <= self.norms)
        better = smaller | (~self.found & (progress >= self.progress))
        self.norms = torch.where(smaller, size, self.norms)
        self.progress = torch.where(better, progress, self.progress)
        self.adv = torch.where(per_sample(better, iterate), iterate.detach(), self.adv)
