"""Per-task score sets of one prediction stream (clean, or one attack at one budget): classification
accuracy/AUC/FPR and attack success, segmentation Jaccard/Dice/pixel accuracy/HD95 (also by structure size),
detection mAP/mIoU and effects on the objects."""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import torch
from torch import Tensor, nn
from torchmetrics.detection import MeanAveragePrecision

from callbacks.bootstrap import Parts, mean_parts
from callbacks.metrics import (
    AttackSuccess,
    ClassificationScores,
    DetectionEffects,
    SegmentationScores,
)
from lightning_modules.metrics import MatchedBoxIoU


class TaskScores(nn.Module):
    """Scores of one prediction stream; ``drops`` names the headline metrics whose fall is reported."""

    headline: tuple[str, ...] = ()
    per_sample_metric: str | None = None  # the name of ``per_sample``'s score; None: no per-sample score
    mean_metrics: tuple[str, ...] = ()  # the means over images ``per_image_parts`` gives the parts of

    def update_scores(self, objective: Any, outputs: Any, target: Any) -> None:
        raise NotImplementedError

    def per_sample(self, objective: Any, outputs: Any, target: Any) -> Tensor | None:
        """(B,) score of each sample, whose minimum over attacks is the per-sample worst case."""
        return None

    def per_image_parts(self, objective: Any, outputs: Any, target: Any) -> Parts:
        """Per-image (numerator, denominator) of each of ``mean_metrics``, for their bootstrap intervals; called
        after ``update_scores`` on the same batch, whose per-image values it may reuse."""
        return {}

    def update_success(self, objective: Any, clean: Any, adversarial: Any, target: Any, goal: Any) -> None:
        """Attack success bookkeeping; only tasks with a per-sample notion of success override it."""

    def compute_scores(self) -> dict[str, Tensor]:
        raise NotImplementedError

    def drops(self, clean: dict[str, Tensor], adversarial: dict[str, Tensor]) -> dict[str, Tensor]:
        """Clean minus adversarial value of each headline metric, as ``{metric}_drop``."""
        return {f"{name}_drop": clean[name] - adversarial[name] for name in self.headline}

    def reset(self) -> None:
        for metric in self.children():
            metric.reset()


class ClassificationTaskScores(TaskScores):
    headline = ("accuracy", "auc")
    per_sample_metric = "accuracy"

    def __init__(self, num_classes: int, attacked: bool = True) -> None:
        super().__init__()
        self.scores = ClassificationScores(num_classes)
        self.success = AttackSuccess() if attacked else None

    def update_scores(self, objective: Any, outputs: Any, target: Tensor) -> None:
        self.scores.update(objective.logits(outputs), target)

    def per_sample(self, objective: Any, outputs: Any, target: Tensor) -> Tensor:
        """1 where the sample is classified correctly, else 0."""
        return (objective.predict(outputs) == target).float()

    def update_success(self, objective: Any, clean: Any, adversarial: Any, target: Tensor, goal: Any) -> None:
        self.success.update(objective.predict(clean), objective.predict(adversarial), target, goal)

    def compute_scores(self) -> dict[str, Tensor]:
        """Scores, plus success rates for an attacked stream. Which metrics compute (and so sync under
        DDP) is fixed at construction, never read from this rank's local states."""
        scores = self.scores.compute()
        if self.success is not None:
            scores |= self.success.compute()
        return scores


class SegmentationTaskScores(TaskScores):
    headline = ("jaccard", "dice")
    per_sample_metric = "image_jaccard"
    mean_metrics = ("jaccard", "dice", "pixel_accuracy", "hd95")

    def __init__(self) -> None:
        super().__init__()
        self.scores = SegmentationScores()

    def update_scores(self, objective: Any, outputs: Any, target: Tensor) -> None:
        self.scores.update(objective.predict(outputs) > 0, target > 0)

    def per_sample(self, objective: Any, outputs: Any, target: Tensor) -> Tensor:
        """Each image's foreground Jaccard; 1 for an image with no foreground predicted or labelled."""
        predicted, truth = (objective.predict(outputs) > 0).flatten(1), (target > 0).flatten(1)
        union = (predicted | truth).sum(dim=1)
        overlap = (predicted & truth).sum(dim=1)
        return torch.where(union > 0, overlap / union.clamp_min(1), torch.ones_like(overlap, dtype=torch.float))

    def per_image_parts(self, objective: Any, outputs: Any, target: Tensor) -> Parts:
        """Each image's pixel counts behind the pooled Jaccard, Dice and pixel accuracy, and its HD95: the rows
        ``update_scores`` just kept for this batch, so each image's HD95 is computed once."""
        rows = self.scores.rows[-1] if self.scores.rows else None
        if rows is None or len(rows) != len(target):
            raise RuntimeError("per_image_parts reads the rows of update_scores: call that first, on the same batch")
        _, tp, fp, fn, pixels, hd95 = rows.unbind(dim=1)
        return {
            "jaccard": (tp, tp + fp + fn),
            "dice": (2 * tp, 2 * tp + fp + fn),
            "pixel_accuracy": (pixels - fp - fn, pixels),
            "hd95": mean_parts(hd95),
        }

    def compute_scores(self) -> dict[str, Tensor]:
        return self.scores.compute()


class DetectionTaskScores(TaskScores):
    """mAP, mAP@0.5, matched-box IoU and the effects on the objects (``DetectionEffects``) of the detections
    scoring above ``score_threshold``."""

    headline = ("map", "map_50")
    per_sample_metric = "image_recall"
    mean_metrics = ("hallucinations_per_image", "detections_per_image")

    def __init__(self, score_threshold: float = 0.5) -> None:
        super().__init__()
        self.average_precision = MeanAveragePrecision(iou_type="bbox")
        self.matched_iou = MatchedBoxIoU()
        self.effects = DetectionEffects(score_threshold)

    def update_scores(self, objective: Any, outputs: Any, target: list[dict[str, Tensor]]) -> None:
        predictions = objective.predict(outputs)
        self.average_precision.update(predictions, target)
        self.matched_iou.update(predictions, target)
        self.effects.update(predictions, target)

    def batch_counts(self, target: list[dict[str, Tensor]]) -> list[dict[str, Tensor]]:
        """The per-image counts ``update_scores`` just made for this batch (``detection_effects``)."""
        counts = getattr(self.effects, "batch_counts", [])
        if len(counts) != len(target):
            raise RuntimeError("the per-image scores read the counts of update_scores: call that first, on the "
                               "same batch")
        return counts

    def per_sample(self, objective: Any, outputs: Any, target: list[dict[str, Tensor]]) -> Tensor:
        """Each image's recall: the share of its objects found with the right label (``true_positives`` /
        ``objects``); 1 for an image without objects."""
        counts = self.batch_counts(target)
        found = torch.stack([count["true_positives"] for count in counts]).float()
        objects = torch.stack([count["objects"] for count in counts]).float()
        return torch.where(objects > 0, found / objects.clamp_min(1), torch.ones_like(found))

    def per_image_parts(self, objective: Any, outputs: Any, target: list[dict[str, Tensor]]) -> Parts:
        """Each image's hallucinations and detections above the score threshold, for their bootstrap intervals."""
        counts = self.batch_counts(target)
        return {
            f"{name}_per_image": mean_parts(torch.stack([count[name] for count in counts]).double())
            for name in ("hallucinations", "detections")
        }

    def compute_scores(self) -> dict[str, Tensor]:
        average_precision = self.average_precision.compute()
        return {
            "map": average_precision["map"],
            "map_50": average_precision["map_50"],
            "mean_iou": self.matched_iou.compute(),
            **self.effects.compute(),
        }


def task_scores(module: pl.LightningModule, attacked: bool = True) -> TaskScores:
    """The score set for the module's task (``module.task``); ``attacked`` streams also score success."""
    task = getattr(module, "task", None)
    if task == "classification":
        return ClassificationTaskScores(module.hparams.num_classes, attacked)
    if task == "segmentation":
        return SegmentationTaskScores()
    if task == "detection":
        return DetectionTaskScores()
    raise ValueError(f"{type(module).__name__}.task must be classification, segmentation or detection, got {task!r}")
