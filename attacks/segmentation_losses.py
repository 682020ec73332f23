"""Per-position losses of the segmentation attacks (SegPGD, CosPGD, SEA), over the dense logits of any objective.

Each loss takes the ``PixelScores`` of one forward pass and returns a per-sample (B,) value: the sum over the P
positions divided by P (the papers' 1/(HW)), positions without a valid label adding 0. A classifier's (B, K)
logits are one position, a detector's proposals P positions (see ``attacks.dense.position_scores``).
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from attacks.base import Objective
from attacks.dense import position_scores
from attacks.norms import TINY


class PixelScores(NamedTuple):
    """Logits (B, K, P), labels (B, P) clamped into [0, K), and the (B, P) mask of the labels that were valid
    (detection padding, label -1, is not)."""

    logits: Tensor
    labels: Tensor
    valid: Tensor

    def average(self, per_position: Tensor) -> Tensor:
        """(B,): the sum of a (B, P) loss over the valid positions, divided by P."""
        return (per_position * self.valid).mean(dim=1)

    def cross_entropy(self) -> Tensor:
        """(B, P) cross entropy of every position."""
        return F.cross_entropy(self.logits, self.labels, reduction="none")

    def true_log_probability(self) -> Tensor:
        """(B, P) log softmax of the true class."""
        return self.logits.log_softmax(dim=1).gather(1, self.labels.unsqueeze(1)).squeeze(1)

    def normalised_true_logit(self) -> Tensor:
        """(B, P) z_y / ||z||_2: the true class's logit once the logits are scaled to the unit sphere."""
        true = self.logits.gather(1, self.labels.unsqueeze(1)).squeeze(1)
        return true / torch.linalg.vector_norm(self.logits, dim=1).clamp_min(TINY)

    def correct(self) -> Tensor:
        """(B, P) bool: the prediction equals the label (no gradient flows through the mask)."""
        return self.logits.detach().argmax(dim=1) == self.labels

    def accuracy(self) -> Tensor:
        """(B,) pixel accuracy, positions without a valid label counted as correct (the order over images and
        iterates is that of the accuracy over the valid positions)."""
        return (self.correct() | ~self.valid).float().mean(dim=1)


def pixel_scores(objective: Objective, outputs: Any, target: Any) -> PixelScores:
    """The ``PixelScores`` of ``outputs``: ``objective.logits`` and ``objective.dense_target`` over every position."""
    logits, labels = position_scores(objective, outputs, target)
    classes = logits.shape[1]
    return PixelScores(logits, labels.clamp(0, classes - 1), (labels >= 0) & (labels < classes))


def mean_cross_entropy(scores: PixelScores) -> Tensor:
    """(1/HW) sum_j CE_j: the plain pixel-wise cross entropy."""
    return scores.average(scores.cross_entropy())


def segpgd_weight(step: int, steps: int) -> float:
    """SegPGD's lambda(t) = (t - 1) / (2T) (Gu et al. 2022) at the 0-based ``step`` = t - 1 of ``steps`` = T."""
    return step / (2 * steps)


def segpgd_loss(scores: PixelScores, step: int, steps: int) -> Tensor:
    """SegPGD's loss (Gu et al. 2022): (1 - lambda(t))/HW sum_{correct} CE_j + lambda(t)/HW sum_{wrong} CE_k, so
    the first steps push the still-correct pixels and the later ones keep the wrong pixels wrong."""
    weight = segpgd_weight(step, steps)
    return scores.average(torch.where(scores.correct(), 1 - weight, weight) * scores.cross_entropy())


def cosine_weights(scores: PixelScores) -> Tensor:
    """(B, P) cos(softmax(z_j), one_hot(y_j)) = p_y / ||p||_2 (CosPGD, Agnihotri et al. 2024, Algorithm 1),
    detached as in the authors' code: the weight scales each pixel's loss and is not differentiated."""
    probabilities = scores.logits.detach().softmax(dim=1)
    true = probabilities.gather(1, scores.labels.unsqueeze(1)).squeeze(1)
    return true / torch.linalg.vector_norm(probabilities, dim=1)


def cospgd_loss(scores: PixelScores, targeted: bool = False) -> Tensor:
    """CosPGD's loss (Agnihotri et al. 2024, Algorithm 1): (1/HW) sum_j cos_j CE_j, which the attack ascends;
    targeted (``scores.labels`` the goal) (1/HW) sum_j (1 - cos_j) CE_j, which it descends."""
    weights = cosine_weights(scores)
    return scores.average((1 - weights if targeted else weights) * scores.cross_entropy())


def masked_cross_entropy(scores: PixelScores) -> Tensor:
    """SEA's L_Mask-CE (Croce et al. 2024, Sec. 3): (1/HW) sum over the still-correct pixels of CE_j."""
    return scores.average(scores.correct() * scores.cross_entropy())


def jensen_shannon(scores: PixelScores) -> Tensor:
    """SEA's L_JS (Croce et al. 2024, Sec. 3): (1/HW) sum_j JS(softmax(z_j) || one_hot(y_j)).

    With q = one_hot(y) and m = (p + q)/2 the divergence depends on p = p_y alone:
    JS = log 2 + (p log p - (1 + p) log(1 + p)) / 2, written through log p so its gradient stays finite.
    """
    log_true = scores.true_log_probability()
    true = log_true.exp()
    per_position = math.log(2) + (true * log_true - (1 + true) * torch.log1p(true)) / 2
    return scores.average(per_position)


def spherical(scores: PixelScores) -> Tensor:
    """(1/HW) sum_j -z_{y_j} / ||z_j||_2: the negated true logit of the logits normalised to the unit sphere."""
    return scores.average(-scores.normalised_true_logit())


def masked_spherical(scores: PixelScores) -> Tensor:
    """SEA's L_Mask-Sph (Croce et al. 2024, Sec. 3): ``spherical`` over the still-correct pixels only."""
    return scores.average(-scores.normalised_true_logit() * scores.correct())
