"""Segmentation Ensemble Attack (Croce, Singh, Hein, ECCV 2024, "Towards reliable evaluation and fast training of
robust semantic segmentation models", Sec. 3): APGD on four complementary segmentation losses, each with
progressive radius reduction, keeping per image the point of lowest pixel accuracy."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import torch
from torch import Tensor

from attacks.apgd import APGD
from attacks.base import (
    Attack,
    AttackResult,
    Objective,
    SampleRandom,
    TraceRecorder,
    check_budget,
    check_steps,
)
from attacks.norms import norm_by_name, per_sample
from attacks.segmentation_losses import (
    PixelScores,
    jensen_shannon,
    masked_cross_entropy,
    masked_spherical,
    mean_cross_entropy,
    pixel_scores,
    segpgd_loss,
    spherical,
)

RADIUS_FACTORS = (2.0, 1.5, 1.0)  # progressive radius reduction: 2 eps, 1.5 eps, then eps ...
RADIUS_SHARES = (0.3, 0.3)  # ... for 30 %, 30 % and the remaining 40 % of the iterations
NOT_LOWERED = -1  # ``extras["loss"]`` of an image no loss brought below its clean pixel accuracy


class SEALoss(NamedTuple):
    """A loss APGD ascends (given the scores, the step and the number of steps) and the progress loss its step-size
    control and kept iterate follow: a masked loss falls as pixels flip, so its progress is the unmasked loss
    (CE, or the spherical loss for the masked spherical one), as in the SEA authors' evaluation."""

    ascend: Callable[[PixelScores, int, int], Tensor]
    progress: Callable[[PixelScores], Tensor]


SEA_LOSSES: dict[str, SEALoss] = {
    "mask_ce": SEALoss(lambda scores, step, steps: masked_cross_entropy(scores), mean_cross_entropy),
    "segpgd": SEALoss(segpgd_loss, mean_cross_entropy),
    "js": SEALoss(lambda scores, step, steps: jensen_shannon(scores), mean_cross_entropy),
    "mask_spherical": SEALoss(lambda scores, step, steps: masked_spherical(scores), spherical),
}


def radius_schedule(steps: int) -> list[tuple[float, int]]:
    """(radius factor, iterations) of each stage: 2 eps, 1.5 eps and eps for int(0.3 steps), int(0.3 steps) and
    the rest; stages left without iterations are skipped."""
    first = [int(share * steps) for share in RADIUS_SHARES]
    counts = [*first, steps - sum(first)]
    return [(factor, count) for factor, count in zip(RADIUS_FACTORS, counts, strict=True) if count > 0]


@torch.no_grad()
def pixel_accuracy(objective: Objective, images: Tensor, target: Any) -> Tensor:
    """(B,) pixel accuracy of the model at ``images`` (see ``PixelScores.accuracy``)."""
    return pixel_scores(objective, objective.forward(images), target).accuracy()


class SegmentationAPGD(APGD):
    """APGD (Croce & Hein 2020, Algorithm 1) ascending one of the SEA losses (``SEA_LOSSES``): its gradient
    steps follow that loss, its step-size control and kept iterate follow the loss's progress measure.
    Untargeted, one run; the defaults are APGD's."""

    name = "apgd_seg"
    fixed = {"target_mode": "untargeted", "n_restarts": 1}

    def __init__(self, loss: str = "mask_ce", **options: Any) -> None:
        super().__init__(**options)
        if loss not in SEA_LOSSES:
            raise ValueError(f"loss must be one of {sorted(SEA_LOSSES)}, got {loss!r}")
        self.loss = loss

    def step_loss(
        self, objective: Objective, outputs: Any, adv: Tensor, images: Tensor, target: Any, step: int
    ) -> Tensor:
        return SEA_LOSSES[self.loss].ascend(pixel_scores(objective, outputs, target), step, self.steps)

    def loss_gradient(
        self, objective: Objective, adv: Tensor, images: Tensor, target: Any, step: int
    ) -> tuple[Tensor, Tensor, Any]:
        """The gradient of the ascended loss, with the progress loss as the per-sample loss APGD compares."""
        gradient, _, outputs = super().loss_gradient(objective, adv, images, target, step)
        with torch.no_grad():
            progress = SEA_LOSSES[self.loss].progress(pixel_scores(objective, outputs, target))
        return gradient, progress, outputs


class LowestAccuracy:
    """The ``record`` callback of an APGD run that keeps, per image, the iterate of lowest pixel accuracy (the
    later one on ties, as the SEA authors' code), starting from ``start``; the accuracy of an iterate is read
    from the outputs its gradient step already computed."""

    def __init__(self, objective: Objective, target: Any, start: Tensor) -> None:
        self.objective, self.target = objective, target
        self.point, self.accuracy = start, pixel_accuracy(objective, start, target)

    def __call__(self, adv: Tensor, loss: Tensor, outputs: Any) -> None:
        with torch.no_grad():
            accuracy = pixel_scores(self.objective, outputs, self.target).accuracy()
        lower = accuracy <= self.accuracy
        self.point = torch.where(per_sample(lower, adv), adv, self.point)
        self.accuracy = torch.where(lower, accuracy, self.accuracy)


class SEA(Attack):
    """SEA (Croce, Singh, Hein 2024, Sec. 3): for each loss in ``losses`` (default all four: masked cross
    entropy, the SegPGD loss, the Jensen-Shannon divergence to the one-hot label, the masked spherical loss),
    one APGD run of ``steps`` iterations with progressive radius reduction (``radius_schedule``: 2 eps, 1.5 eps,
    eps, each stage starting from the previous stage's lowest-accuracy point projected into its ball); per
    image the point of lowest pixel accuracy over the losses is returned.

    ``extras["loss"]`` records per image which loss gave it (index into ``extras["losses"]``; -1: none lowered
    the clean pixel accuracy, the clean image is returned) and ``extras["pixel_accuracy"]`` its accuracy. The
    losses share one random start (in the first ball), so a loss's run does not depend on which others run.
    Works on any objective through ``objective.logits``/``dense_target`` (a classifier is one position).
    """

    name = "sea"

    def __init__(
        self,
        eps: float = 8 / 255,
        norm: str = "linf",
        steps: int = 300,
        losses: Sequence[str] = tuple(SEA_LOSSES),
        seed: int = 0,
    ) -> None:
        super().__init__(seed)
        norm_by_name(norm)
        check_budget("eps", eps, norm)
        check_steps("steps", steps)
        if isinstance(losses, str) or not losses or any(loss not in SEA_LOSSES for loss in losses):
            raise ValueError(f"losses must be a non-empty list of names from {list(SEA_LOSSES)}, got {losses!r}")
        self.eps = float(eps)
        self.norm = norm
        self.steps = int(steps)
        self.losses = tuple(losses)
        self.runs = [
            [
                SegmentationAPGD(loss=loss, eps=self.radius(factor), steps=count, norm=norm, seed=seed)
                for factor, count in radius_schedule(self.steps)
            ]
            for loss in self.losses
        ]

    def radius(self, factor: float) -> float:
        """factor x eps; at most 1 in Linf, where 1 already reaches every image on [0, 1] values."""
        return min(factor * self.eps, 1.0) if self.norm == "linf" else factor * self.eps

    def run(self, objective: Objective, images: Tensor, target: Any, random: SampleRandom) -> AttackResult:
        adv, accuracy = images, pixel_accuracy(objective, images, target)
        winner = torch.full_like(accuracy, NOT_LOWERED, dtype=torch.long)
        start = self.runs[0][0].initial_point(images, random)
        for index, stages in enumerate(self.runs):
            lowest = self.shrinking_run(objective, images, target, start, stages)
            lower = lowest.accuracy < accuracy
            adv = torch.where(per_sample(lower, adv), lowest.point, adv)
            accuracy = torch.where(lower, lowest.accuracy, accuracy)
            winner[lower] = index
        recorder = TraceRecorder(images)
        recorder.step(adv - images)
        extras = {"loss": winner, "losses": list(self.losses), "pixel_accuracy": accuracy}
        return AttackResult(adv, recorder.finish(adv - images), extras)

    def shrinking_run(
        self, objective: Objective, images: Tensor, target: Any, start: Tensor, stages: list[SegmentationAPGD]
    ) -> LowestAccuracy:
        """One loss's APGD stages over the shrinking balls; the last stage's lowest-accuracy points lie within eps."""
        point = start
        for stage in stages:
            lowest = LowestAccuracy(objective, target, images + stage.norm.project(point - images, stage.eps))
            stage.descend(objective, images, lowest.point, target, target, lowest)
            point = lowest.point
        return lowest
