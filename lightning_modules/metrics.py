"""Detection metric beside mAP: mean IoU of greedily matched boxes, with exact DDP reduction."""

from __future__ import annotations

import torch
from torch import Tensor
from torchmetrics import Metric
from torchvision.ops import box_iou


def greedy_matched_iou(
    boxes: Tensor, scores: Tensor, labels: Tensor, gt_boxes: Tensor, gt_labels: Tensor, threshold: float
) -> Tensor:
    """IoUs (M,) of the pairs matched greedily: by descending score, each prediction takes the free
    ground-truth box of its label with the highest IoU when that IoU is >= ``threshold``."""
    if len(boxes) == 0 or len(gt_boxes) == 0:
        return boxes.new_zeros(0)
    order = scores.argsort(descending=True)
    overlap = box_iou(boxes[order], gt_boxes)
    overlap = torch.where(labels[order].unsqueeze(1) == gt_labels.unsqueeze(0), overlap, torch.zeros_like(overlap))
    free = torch.ones(len(gt_boxes), dtype=torch.bool, device=boxes.device)
    matched = []
    for row in overlap:
        best, index = torch.where(free, row, torch.full_like(row, -1.0)).max(dim=0)
        if best >= threshold:
            free[index] = False
            matched.append(best)
    return torch.stack(matched) if matched else boxes.new_zeros(0)


class MatchedBoxIoU(Metric):
    """Mean IoU over the predicted boxes matched to ground truth (``greedy_matched_iou``); 0 when none match.

    ``update(preds, target)`` takes torchvision detection dicts: preds with boxes/scores/labels,
    target with boxes/labels, boxes xyxy in the same frame.
    """

    full_state_update = False
    higher_is_better = True

    def __init__(self, iou_threshold: float = 0.5, **kwargs) -> None:
        super().__init__(**kwargs)
        if not 0.0 < iou_threshold <= 1.0:
            raise ValueError(f"iou_threshold must be in (0, 1], got {iou_threshold!r}")
        self.iou_threshold = iou_threshold
        self.add_state("iou_sum", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("matched", torch.tensor(0), dist_reduce_fx="sum")

    def update(self, preds: list[dict[str, Tensor]], target: list[dict[str, Tensor]]) -> None:
        for prediction, truth in zip(preds, target, strict=True):
            ious = greedy_matched_iou(
                prediction["boxes"],
                prediction["scores"],
                prediction["labels"],
                truth["boxes"].to(prediction["boxes"]),
                truth["labels"],
                self.iou_threshold,
            )
            self.iou_sum += ious.sum().double()
            self.matched += len(ious)

    def compute(self) -> Tensor:
        return (self.iou_sum / self.matched.clamp(min=1)).float()
