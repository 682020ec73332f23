"""The attack boundary of a torchvision Faster R-CNN: deterministic, per-image, in eval mode throughout."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.models.detection import FasterRCNN
from torchvision.models.detection._utils import BalancedPositiveNegativeSampler
from torchvision.models.detection.rpn import concat_box_prediction_layers
from torchvision.models.detection.transform import resize_boxes
from torchvision.ops import box_iou

from attacks.base import evaluation_mode
from attacks.validation import check_class_indices, describe
from lightning_modules.objectives import soft_cross_entropy

# torchvision's fastrcnn_loss and RegionProposalNetwork.compute_loss use this smooth-L1 beta.
SMOOTH_L1_BETA = 1 / 9
BOX_TOLERANCE = 1e-3  # pixels float rounding may take a box edge outside the image


def check_boxes(name: str, boxes: Any, height: int, width: int) -> None:
    """Raise ValueError naming ``name`` and the first bad row unless ``boxes`` is a floating-point (N, 4) tensor
    of finite xyxy pixel boxes with 0 <= x1 < x2 <= width and 0 <= y1 < y2 <= height."""
    if not isinstance(boxes, Tensor) or not boxes.is_floating_point() or boxes.dim() != 2 or boxes.shape[1] != 4:
        raise ValueError(f"{name} must be a floating-point (N, 4) tensor of xyxy pixel boxes, got {describe(boxes)}")
    x1, y1, x2, y2 = boxes.unbind(dim=1)
    inside = (x1 >= -BOX_TOLERANCE) & (y1 >= -BOX_TOLERANCE) & (x2 <= width + BOX_TOLERANCE)
    good = boxes.isfinite().all(dim=1) & (x1 < x2) & (y1 < y2) & inside & (y2 <= height + BOX_TOLERANCE)
    if not good.all():
        row = int((~good).nonzero()[0])
        raise ValueError(
            f"{name}[{row}] = {boxes[row].tolist()} is not a box inside the {width}x{height} image "
            "(finite xyxy pixels, 0 <= x1 < x2 <= width, 0 <= y1 < y2 <= height)"
        )


def expected_sampled_loss(
    classification: Tensor, regression: Tensor, labels: Tensor, sampler: BalancedPositiveNegativeSampler
) -> Tensor:
    """Per-image (B,) expectation, over torchvision's balanced sampler, of its sampled detection loss.

    ``classification``, ``regression`` and ``labels`` are (B, N); labels > 0 positive, 0 negative, < 0
    ignored. The sampler draws min(#pos, n * fraction) positives and fills n with negatives, each
    equally likely, so the expected mean classification loss is (d+ mean+ + d- mean-) / (d+ + d-)
    and the regression loss (summed over drawn positives / drawn count) adds d+ mean+(reg) / (d+ + d-).
    """
    positive, negative = labels > 0, labels == 0
    count_positive, count_negative = positive.sum(dim=1), negative.sum(dim=1)
    drawn_positive = count_positive.clamp(max=int(sampler.batch_size_per_image * sampler.positive_fraction))
    drawn_negative = torch.minimum(count_negative, sampler.batch_size_per_image - drawn_positive)
    zero = torch.zeros_like(classification)
    mean_positive = (torch.where(positive, classification + regression, zero)).sum(dim=1) / count_positive.clamp(min=1)
    mean_negative = (torch.where(negative, classification, zero)).sum(dim=1) / count_negative.clamp(min=1)
    drawn = (drawn_positive + drawn_negative).clamp(min=1)
    return (drawn_positive * mean_positive + drawn_negative * mean_negative) / drawn


def pad_proposals(boxes: list[Tensor], count: int, image_sizes: list[tuple[int, int]]) -> tuple[Tensor, Tensor]:
    """Proposals (B, count, 4) and validity (B, count): each image's first ``count`` proposals, then
    copies of the whole-image box marked invalid."""
    padded, valid = [], []
    for proposals, (height, width) in zip(boxes, image_sizes, strict=True):
        proposals = proposals[:count]
        filler = proposals.new_tensor([0.0, 0.0, width, height]).expand(count - len(proposals), 4)
        padded.append(torch.cat([proposals, filler]))
        valid.append(torch.arange(count, device=proposals.device) < len(proposals))
    return torch.stack(padded), torch.stack(valid)


@dataclass
class DetectionOutputs:
    """A Faster R-CNN's differentiable outputs for a batch, boxes in its resized frame.

    ``proposals`` (B, P, 4) xyxy with ``valid`` (B, P) (False: padding); ``class_logits`` (B, K + 1, P)
    and ``box_regression`` (B, P, K + 1, 4) of the ROI head on those proposals; ``objectness`` (B, A)
    and ``rpn_deltas`` (B, A, 4) of the RPN on its ``anchors`` (B, A, 4); ``features`` the backbone
    maps; ``image_sizes`` the resized and ``original_sizes`` the input (height, width).
    """

    proposals: Tensor
    valid: Tensor
    class_logits: Tensor
    box_regression: Tensor
    objectness: Tensor
    rpn_deltas: Tensor
    anchors: Tensor
    features: OrderedDict[str, Tensor]
    image_sizes: list[tuple[int, int]]
    original_sizes: list[tuple[int, int]]


class DetectionObjective:
    """Attack boundary of a torchvision ``FasterRCNN`` (see docs/architecture.md, "Task modules").

    The network runs in eval mode (deterministic proposals, BatchNorm running statistics) and is left
    in the modes it had. Each image keeps the RPN's top P = ``rpn.post_nms_top_n()`` (eval) proposals,
    padded with invalid whole-image boxes so logits stack. ``loss`` is the per-image expectation of
    torchvision's four train-mode losses over its sampler, so a sample's loss ignores the batch.
    """

    def __init__(self, model: FasterRCNN) -> None:
        self.model = model

    @property
    def num_classes(self) -> int:
        """K: the object classes, labelled 1..K (0 is the background)."""
        return self.model.roi_heads.box_predictor.cls_score.out_features - 1

    def check_target(self, images: Tensor, target: list[dict[str, Tensor]] | None) -> None:
        """ValueError naming the sample unless ``target`` is None or one dict per image whose ``boxes`` pass
        ``check_boxes`` and whose ``labels`` are N integers in 1..K."""
        if target is None:
            return
        if not isinstance(target, (list, tuple)) or len(target) != len(images):
            raise ValueError(f"target must be a list of {len(images)} dicts (one per image), got {describe(target)}")
        height, width = images.shape[-2:]
        for index, sample in enumerate(target):
            name = f"target[{index}]"
            if not isinstance(sample, Mapping) or not {"boxes", "labels"} <= sample.keys():
                raise ValueError(f"{name} must be a dict with 'boxes' and 'labels', got {describe(sample)}")
            check_boxes(f"{name}['boxes']", sample["boxes"], height, width)
            check_class_indices(f"{name}['labels']", sample["labels"], (len(sample["boxes"]),), 1, self.num_classes + 1)

    def forward(self, images: Tensor) -> DetectionOutputs:
        """Eval-mode RPN and ROI-head outputs of images (B, 3, H, W) in [0, 1], differentiable w.r.t. them."""
        net = self.model
        with evaluation_mode(net):
            image_list, _ = net.transform(list(images))
            features = net.backbone(image_list.tensors)
            maps = list(features.values())
            objectness, deltas = net.rpn.head(maps)
            anchors = net.rpn.anchor_generator(image_list, maps)
            anchors_per_level = [level[0].numel() for level in objectness]
            objectness, deltas = concat_box_prediction_layers(objectness, deltas)
            decoded = net.rpn.box_coder.decode(deltas.detach(), anchors).view(len(images), -1, 4)
            boxes, _ = net.rpn.filter_proposals(decoded, objectness, image_list.image_sizes, anchors_per_level)
            proposals, valid = pad_proposals(boxes, net.rpn.post_nms_top_n(), image_list.image_sizes)
            class_logits, box_regression = self._box_head(features, list(proposals), image_list.image_sizes)
        batch, count = valid.shape
        return DetectionOutputs(
            proposals=proposals,
            valid=valid,
            class_logits=class_logits.view(batch, count, -1).transpose(1, 2),
            box_regression=box_regression.view(batch, count, -1, 4),
            objectness=objectness.view(batch, -1),
            rpn_deltas=deltas.view(batch, -1, 4),
            anchors=torch.stack(anchors),
            features=features,
            image_sizes=list(image_list.image_sizes),
            original_sizes=[tuple(image.shape[-2:]) for image in images],
        )

    def _box_head(
        self, features: OrderedDict[str, Tensor], boxes: list[Tensor], image_sizes: list[tuple[int, int]]
    ) -> tuple[Tensor, Tensor]:
        heads = self.model.roi_heads
        return heads.box_predictor(heads.box_head(heads.box_roi_pool(features, boxes, image_sizes)))

    def _resized_targets(self, outputs: DetectionOutputs, target: list[dict[str, Tensor]]) -> list[dict[str, Tensor]]:
        return [
            {
                "boxes": resize_boxes(t["boxes"].to(outputs.proposals), original, resized),
                "labels": t["labels"].to(outputs.proposals.device),
            }
            for t, original, resized in zip(target, outputs.original_sizes, outputs.image_sizes, strict=True)
        ]

    def _match(self, boxes: list[Tensor], targets: list[dict[str, Tensor]]) -> tuple[list[Tensor], list[Tensor]]:
        """Labels of ``boxes`` by IoU with ground truth (>= 0.5: its label, else 0) and matched gt boxes."""
        heads = self.model.roi_heads
        gt_boxes = [t["boxes"] for t in targets]
        matched, labels = heads.assign_targets_to_proposals(boxes, gt_boxes, [t["labels"] for t in targets])
        matched_boxes = [
            gt[index] if len(gt) else torch.zeros_like(proposals)
            for gt, index, proposals in zip(gt_boxes, matched, boxes, strict=True)
        ]
        return labels, matched_boxes

    def loss(self, outputs: DetectionOutputs, target: list[dict[str, Tensor]]) -> Tensor:
        """(B,) RPN objectness + RPN box + ROI classification + ROI box loss of each image."""
        targets = self._resized_targets(outputs, target)
        return self._rpn_loss(outputs, targets) + self._roi_loss(outputs, targets)

    def _rpn_loss(self, outputs: DetectionOutputs, targets: list[dict[str, Tensor]]) -> Tensor:
        rpn = self.model.rpn
        anchors = list(outputs.anchors)
        labels, matched = rpn.assign_targets_to_anchors(anchors, targets)
        regression_targets = torch.stack(rpn.box_coder.encode(matched, anchors))
        labels = torch.stack(labels)
        classification = F.binary_cross_entropy_with_logits(outputs.objectness, labels.clamp(min=0), reduction="none")
        regression = F.smooth_l1_loss(
            outputs.rpn_deltas, regression_targets, beta=SMOOTH_L1_BETA, reduction="none"
        ).sum(dim=-1)
        return expected_sampled_loss(classification, regression, labels, rpn.fg_bg_sampler)

    def _roi_loss(self, outputs: DetectionOutputs, targets: list[dict[str, Tensor]]) -> Tensor:
        """ROI head loss over the valid proposals plus the ground-truth boxes, as torchvision trains it."""
        heads = self.model.roi_heads
        gt_boxes = [t["boxes"] for t in targets]
        counts = [len(boxes) for boxes in gt_boxes]
        with evaluation_mode(self.model):
            gt_logits, gt_regression = self._box_head(outputs.features, gt_boxes, outputs.image_sizes)
        boxes = [torch.cat([proposals, gt]) for proposals, gt in zip(outputs.proposals, gt_boxes, strict=True)]
        labels, matched = self._match(boxes, targets)
        regression_targets = heads.box_coder.encode(matched, boxes)
        per_image = []
        for index, (logits, deltas) in enumerate(
            zip(gt_logits.split(counts), gt_regression.split(counts), strict=True)
        ):
            logits = torch.cat([outputs.class_logits[index].T, logits])
            deltas = torch.cat([outputs.box_regression[index], deltas.view(-1, *outputs.box_regression.shape[2:])])
            kept = torch.cat([outputs.valid[index], outputs.valid.new_ones(counts[index])])
            label = labels[index].masked_fill(~kept, -1)
            classification = F.cross_entropy(logits, label.clamp(min=0), reduction="none")
            predicted = deltas[torch.arange(len(label)), label.clamp(min=0)]
            box = F.smooth_l1_loss(predicted, regression_targets[index], beta=SMOOTH_L1_BETA, reduction="none")
            per_image.append(
                expected_sampled_loss(classification[None], box.sum(dim=-1)[None], label[None], heads.fg_bg_sampler)
            )
        return torch.cat(per_image)

    def predict(self, outputs: DetectionOutputs) -> list[dict[str, Tensor]]:
        """Detections (boxes xyxy in input pixels, scores, labels 1..K) from the valid proposals."""
        net = self.model
        valid = outputs.valid
        with torch.no_grad():
            boxes, scores, labels = net.roi_heads.postprocess_detections(
                outputs.class_logits.transpose(1, 2)[valid],
                outputs.box_regression[valid].flatten(1),
                [proposals[keep] for proposals, keep in zip(outputs.proposals, valid, strict=True)],
                outputs.image_sizes,
            )
            detections = [{"boxes": b, "scores": s, "labels": c} for b, s, c in zip(boxes, scores, labels, strict=True)]
            return net.transform.postprocess(detections, outputs.image_sizes, outputs.original_sizes)

    def logits(self, outputs: DetectionOutputs) -> Tensor:
        return outputs.class_logits

    def dense_target(self, outputs: DetectionOutputs, target: list[dict[str, Tensor]]) -> Tensor:
        """(B, P) proposal labels by IoU matching (>= 0.5: ground-truth label, else 0); -1 on padding."""
        labels, _ = self._match(list(outputs.proposals), self._resized_targets(outputs, target))
        return torch.stack(labels).masked_fill(~outputs.valid, -1)

    def divergence(self, outputs: DetectionOutputs, reference: DetectionOutputs) -> Tensor:
        """(B,) soft cross entropy of each valid proposal's class logits against the softmax of its
        highest-IoU valid proposal in ``reference`` (SMIA Eq. 3), averaged per image; 0 without proposals."""
        per_image = []
        for index in range(len(outputs.valid)):
            mine, theirs = outputs.valid[index], reference.valid[index]
            logits = outputs.class_logits[index].T[mine]
            if len(logits) == 0 or not theirs.any():
                per_image.append(outputs.class_logits.new_zeros(()))
                continue
            nearest = box_iou(outputs.proposals[index][mine], reference.proposals[index][theirs]).argmax(dim=1)
            per_image.append(soft_cross_entropy(logits, reference.class_logits[index].T[theirs][nearest]).mean())
        return torch.stack(per_image)
