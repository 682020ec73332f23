"""Task objectives: the boundary between a network and the attack library (attacks.base.Objective)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from attacks.validation import INTEGER_DTYPES, check_class_indices


def position_mean(per_position: Tensor) -> Tensor:
    """(B,) mean of a (B, ...) tensor over its spatial/proposal positions; a (B,) tensor as it is."""
    return per_position.flatten(1).mean(dim=1) if per_position.dim() > 1 else per_position


def soft_cross_entropy(logits: Tensor, reference_logits: Tensor) -> Tensor:
    """Per-sample cross entropy of ``logits`` against the detached softmax of ``reference_logits``.

    Class dimension at 1; averaged over any spatial/proposal positions. This is SMIA's
    L(f(x~), f(x~ + eta')) (Eq. 3-4) with the reference prediction as the soft label.
    """
    reference = reference_logits.detach().softmax(dim=1)
    return position_mean(-(reference * logits.log_softmax(dim=1)).sum(dim=1))


def kl_divergence(reference_logits: Tensor, logits: Tensor) -> Tensor:
    """Per-sample KL(softmax(reference_logits) || softmax(logits)), class dimension at 1, averaged over any
    positions; gradients flow through both arguments (TRADES' robust term, Zhang et al. 2019, Eq. 5)."""
    reference = reference_logits.log_softmax(dim=1)
    return position_mean((reference.exp() * (reference - logits.log_softmax(dim=1))).sum(dim=1))


class ClassificationObjective:
    """Classifier boundary: outputs are logits (B, K); loss is cross entropy per sample.

    ``num_classes`` K bounds the labels ``check_target`` accepts; None: K is read from the logits of the
    first forward pass (until then labels are only checked to be >= 0).
    """

    def __init__(self, model: nn.Module, num_classes: int | None = None) -> None:
        self.model = model
        self.num_classes = num_classes

    def forward(self, images: Tensor) -> Tensor:
        logits = self.model(images)
        self.num_classes = self.num_classes or logits.shape[1]
        return logits

    def check_target(self, images: Tensor, target: Tensor | None) -> None:
        """ValueError naming the sample unless ``target`` is None or int64 labels (B,) in [0, K)."""
        if target is not None:
            check_class_indices("target", target, (len(images),), 0, self.num_classes, (torch.int64,))

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
    ``num_classes`` is the number of logit channels (1: binary, labels 0 and 1); None: read from the
    first forward pass, as for classification.
    """

    def __init__(self, model: nn.Module, num_classes: int | None = None) -> None:
        self.model = model
        self.num_classes = num_classes

    def forward(self, images: Tensor) -> Tensor:
        logits = self.model(images)
        self.num_classes = self.num_classes or logits.shape[1]
        return logits

    def check_target(self, images: Tensor, target: Tensor | None) -> None:
        """ValueError naming the sample and pixel unless ``target`` is None or an integer (or bool) mask
        (B, H, W) of the images' size with labels in [0, max(K, 2))."""
        if target is not None:
            classes = None if self.num_classes is None else max(self.num_classes, 2)
            shape = (len(images), *images.shape[-2:])
            check_class_indices("target", target, shape, 0, classes, (*INTEGER_DTYPES, torch.bool))

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
