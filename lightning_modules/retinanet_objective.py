"""The attack boundary of a torchvision RetinaNet (one-stage): per-image losses as torchvision trains it,
in eval mode throughout."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor
from torchvision.models.detection import RetinaNet
from torchvision.models.detection._utils import Matcher
from torchvision.models.detection.transform import resize_boxes
from torchvision.ops import box_iou

from attacks.base import evaluation_mode
from lightning_modules.detection_objective import DetectionObjective
from lightning_modules.objectives import soft_cross_entropy


@dataclass
class RetinaNetOutputs:
    """A RetinaNet's differentiable head outputs for a batch, boxes in its resized frame.

    ``class_logits`` (B, A, K + 1) are the sigmoid logits of the head (column 0, the background label, is
    never a positive); ``box_regression`` (B, A, 4) the deltas on ``anchors`` (B, A, 4);
    ``anchors_per_level`` splits A by pyramid level; ``image_sizes`` the resized and ``original_sizes`` the
    input (height, width).
    """

    class_logits: Tensor
    box_regression: Tensor
    anchors: Tensor
    anchors_per_level: list[int]
    image_sizes: list[tuple[int, int]]
    original_sizes: list[tuple[int, int]]


class RetinaNetObjective:
    """Attack boundary of a torchvision ``RetinaNet`` (see docs/architecture.md, "Task modules").

    The network runs in eval mode and is left in the modes it had. ``loss`` is torchvision's focal
    classification plus box loss of each image alone (its training loss is their batch mean), so a
    sample's loss ignores the batch. ``logits`` presents the K sigmoid logits z as K + 1 class scores
    [0, z_1..z_K] over the anchors (a class wins over the background where its probability exceeds 1/2).
    """

    check_target = DetectionObjective.check_target

    def __init__(self, model: RetinaNet) -> None:
        self.model = model

    @property
    def num_classes(self) -> int:
        """K: the object classes, labelled 1..K (0 is the background)."""
        return self.model.head.classification_head.num_classes - 1

    def forward(self, images: Tensor) -> RetinaNetOutputs:
        """Eval-mode head outputs of images (B, 3, H, W) in [0, 1], differentiable w.r.t. them."""
        net = self.model
        with evaluation_mode(net):
            image_list, _ = net.transform(list(images))
            features = list(net.backbone(image_list.tensors).values())
            head = net.head(features)
            anchors = net.anchor_generator(image_list, features)
        positions = [level.shape[-2] * level.shape[-1] for level in features]
        per_position = head["cls_logits"].shape[1] // sum(positions)
        return RetinaNetOutputs(
            class_logits=head["cls_logits"],
            box_regression=head["bbox_regression"],
            anchors=torch.stack(anchors),
            anchors_per_level=[count * per_position for count in positions],
            image_sizes=list(image_list.image_sizes),
            original_sizes=[tuple(image.shape[-2:]) for image in images],
        )

    def _resized_targets(self, outputs: RetinaNetOutputs, target: list[dict[str, Tensor]]) -> list[dict[str, Tensor]]:
        return [
            {
                "boxes": resize_boxes(t["boxes"].to(outputs.anchors), original, resized),
                "labels": t["labels"].to(outputs.anchors.device),
            }
            for t, original, resized in zip(target, outputs.original_sizes, outputs.image_sizes, strict=True)
        ]

    def loss(self, outputs: RetinaNetOutputs, target: list[dict[str, Tensor]]) -> Tensor:
        """(B,) focal classification + box regression loss of each image (``RetinaNet.compute_loss`` alone)."""
        per_image = []
        for index, sample in enumerate(self._resized_targets(outputs, target)):
            head = {
                "cls_logits": outputs.class_logits[index : index + 1],
                "bbox_regression": outputs.box_regression[index : index + 1],
            }
            losses = self.model.compute_loss([sample], head, [outputs.anchors[index]])
            per_image.append(losses["classification"] + losses["bbox_regression"])
        return torch.stack(per_image)

    def predict(self, outputs: RetinaNetOutputs) -> list[dict[str, Tensor]]:
        """Detections (boxes xyxy in input pixels, scores, labels 1..K): torchvision's own post-processing."""
        net = self.model
        with torch.no_grad():
            split = {
                "cls_logits": list(outputs.class_logits.split(outputs.anchors_per_level, dim=1)),
                "bbox_regression": list(outputs.box_regression.split(outputs.anchors_per_level, dim=1)),
            }
            anchors = [list(anchors.split(outputs.anchors_per_level)) for anchors in outputs.anchors]
            detections = net.postprocess_detections(split, anchors, outputs.image_sizes)
            return net.transform.postprocess(detections, outputs.image_sizes, outputs.original_sizes)

    def logits(self, outputs: RetinaNetOutputs) -> Tensor:
        """(B, K + 1, A): the background scored 0, class k by its sigmoid logit z_k."""
        scores = outputs.class_logits
        return torch.cat([torch.zeros_like(scores[..., :1]), scores[..., 1:]], dim=-1).transpose(1, 2)

    def dense_target(self, outputs: RetinaNetOutputs, target: list[dict[str, Tensor]]) -> Tensor:
        """(B, A) anchor labels by the head's matcher: the matched ground-truth label (IoU >= 0.5, or an object's
        best anchor), 0 below IoU 0.4, -1 in between (anchors the loss ignores)."""
        labels = []
        for anchors, sample in zip(outputs.anchors, self._resized_targets(outputs, target), strict=True):
            if len(sample["boxes"]) == 0:
                labels.append(torch.zeros(len(anchors), dtype=torch.long, device=anchors.device))
                continue
            matched = self.model.proposal_matcher(box_iou(sample["boxes"], anchors))
            ignored = torch.where(matched == Matcher.BETWEEN_THRESHOLDS, -1, 0)
            labels.append(torch.where(matched >= 0, sample["labels"][matched.clamp(min=0)], ignored))
        return torch.stack(labels)

    def divergence(self, outputs: RetinaNetOutputs, reference: RetinaNetOutputs) -> Tensor:
        """(B,) soft cross entropy of each anchor's K + 1 scores against the same anchor's softmax in
        ``reference`` (SMIA Eq. 3), averaged over the anchors."""
        return soft_cross_entropy(self.logits(outputs), self.logits(reference))
