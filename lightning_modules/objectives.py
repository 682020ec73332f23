"""Task objectives: the boundary between a network and the attack library (attacks.base.Objective)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def soft_cross_entropy(logits: Tensor, reference_logits: Tensor) -> Tensor:
    """Per-sample cross entropy of ``logits`` against the detached softmax of ``reference_logits``.

    Class dimension at 1; averaged over any spatial/proposal positions. This is SMIA's
    L(f(x~), f(x~ + eta')) (Eq. 3-4) with the reference prediction as the soft label.
    """
    reference = reference_logits.detach().softmax(dim=1)
    per_position = -(reference * logits.log_softmax(dim=1)).sum(dim=1)
    return per_position.flatten(1).mean(dim=1) if per_position.dim() > 1 else per_position


class ClassificationObjective:
    """Classifier boundary: outputs are logits (B, K); loss is cross entropy per sample."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model

    def forward(self, images: Tensor) -> Tensor:
        return self.model(images)

    def loss(self, outputs: Tensor, target: Tensor) -> Tensor:
        return F.cross_entropy(outputs, target, reduction="none")

    def predict(self, outputs: Tensor) -> Tensor:
        return outputs.argmax(dim=1)

    def logits(self, outputs: Tensor) -> Tensor:
        return outputs

    def dense_target(self, outputs: Tensor, target: Tensor) -> Tensor:
        return target

    def divergence(self, outputs: Tensor, reference: Tensor) -> Tensor:
        return soft_cross_entropy(outputs, reference)


class SegmentationObjective:
    """Segmenter boundary: outputs (B, K, H, W); K = 1 means binary with a sigmoid.

    Binary logits z are exposed as two classes [0, z], whose softmax equals the sigmoid, so margin
    and dense attacks see every segmenter as K-class. Loss is the mean per-pixel cross entropy.
    """

    def __init__(self, model: nn.Module) -> None:
        self.model = model

    def forward(self, images: Tensor) -> Tensor:
        return self.model(images)

    def logits(self, outputs: Tensor) -> Tensor:
        if outputs.shape[1] == 1:
            return torch.cat([torch.zeros_like(outputs), outputs], dim=1)
        return outputs

    def loss(self, outputs: Tensor, target: Tensor) -> Tensor:
        per_pixel = F.cross_entropy(self.logits(outputs), target.long(), reduction="none")
        return per_pixel.flatten(1).mean(dim=1)

    def predict(self, outputs: Tensor) -> Tensor:
        return self.logits(outputs).argmax(dim=1)

    def dense_target(self, outputs: Tensor, target: Tensor) -> Tensor:
        return target.long()

    def divergence(self, outputs: Tensor, reference: Tensor) -> Tensor:
        return soft_cross_entropy(self.logits(outputs), self.logits(reference))

