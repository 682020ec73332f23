"""Faster R-CNN detector LightningModule (torchvision, no pretrained weights) with its attack objective."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

from torch import Tensor, nn
from torchmetrics import MetricCollection
from torchmetrics.detection import MeanAveragePrecision
from torchvision.models.detection import (
    FasterRCNN,
    RetinaNet,
    fasterrcnn_mobilenet_v3_large_fpn,
    fasterrcnn_resnet50_fpn,
    retinanet_resnet50_fpn,
)
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import resnet_fpn_backbone
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.ops.feature_pyramid_network import LastLevelP6P7

from lightning_modules.detection_objective import DetectionObjective
from lightning_modules.metrics import MatchedBoxIoU
from lightning_modules.normalization import channel_statistics
from lightning_modules.retinanet_objective import RetinaNetObjective
from lightning_modules.small_backbone import SmallResNetFPN
from lightning_modules.task_module import TaskModule


def fasterrcnn_resnet18_fpn(num_classes: int, **kwargs: Any) -> FasterRCNN:
    """Faster R-CNN on torchvision's ResNet-18 FPN (strides 4-64, trainable BatchNorm, no weights):
    fine enough feature maps for 128-pixel images and cheap to train on a CPU."""
    backbone = resnet_fpn_backbone(
        backbone_name="resnet18", weights=None, norm_layer=nn.BatchNorm2d, trainable_layers=5
    )
    return FasterRCNN(backbone, num_classes=num_classes, **kwargs)


def fasterrcnn_small_fpn(num_classes: int, **kwargs: Any) -> FasterRCNN:
    """Faster R-CNN on ``SmallResNetFPN`` (1.2 M parameters with its FPN, strides 4-64, 64 channels), one anchor size
    per level (16-256 pixels) at three aspect ratios, a 256-wide box head and 300/150 training proposals before
    and after NMS: learns 128-pixel phantoms from scratch in a few hundred CPU steps."""
    backbone = SmallResNetFPN()
    sizes = tuple((size,) for size in (16, 32, 64, 128, 256))
    representation = 256
    return FasterRCNN(
        backbone,
        rpn_anchor_generator=AnchorGenerator(sizes, ((0.5, 1.0, 2.0),) * len(sizes)),
        box_head=TwoMLPHead(backbone.out_channels * 7 * 7, representation),
        box_predictor=FastRCNNPredictor(representation, num_classes),
        **{"rpn_pre_nms_top_n_train": 300, "rpn_post_nms_top_n_train": 150, **kwargs},
    )


def retinanet_resnet18_fpn(num_classes: int, **kwargs: Any) -> RetinaNet:
    """RetinaNet on a ResNet-18 FPN (P3-P7, strides 8-128, trainable BatchNorm, no weights) with anchors of
    half torchvision's sizes (16-406 pixels), which fit the boxes of 128-pixel images."""
    backbone = resnet_fpn_backbone(
        backbone_name="resnet18",
        weights=None,
        norm_layer=nn.BatchNorm2d,
        trainable_layers=5,
        returned_layers=[2, 3, 4],
        extra_blocks=LastLevelP6P7(256, 256),
    )
    sizes = tuple((size, int(size * 2 ** (1 / 3)), int(size * 2 ** (2 / 3))) for size in (16, 32, 64, 128, 256))
    anchors = AnchorGenerator(sizes, ((0.5, 1.0, 2.0),) * len(sizes))
    return RetinaNet(backbone, num_classes=num_classes, anchor_generator=anchors, **kwargs)


# Backbone name -> Faster R-CNN builder taking num_classes and FasterRCNN keywords; never any weights.
FASTER_RCNN_BACKBONES: dict[str, Callable[..., FasterRCNN]] = {
    "mobilenet_v3": partial(fasterrcnn_mobilenet_v3_large_fpn, weights=None, weights_backbone=None),
    "resnet50": partial(fasterrcnn_resnet50_fpn, weights=None, weights_backbone=None),
    "resnet18": fasterrcnn_resnet18_fpn,
    "small": fasterrcnn_small_fpn,
}
# Backbone name -> RetinaNet builder taking num_classes and RetinaNet keywords; never any weights.
RETINANET_BACKBONES: dict[str, Callable[..., RetinaNet]] = {
    "resnet50": partial(retinanet_resnet50_fpn, weights=None, weights_backbone=None),
    "resnet18": retinanet_resnet18_fpn,
}
# Architecture name -> its backbones and its attack objective.
ARCHITECTURES: dict[str, tuple[dict[str, Callable[..., Any]], Callable[[Any], Any]]] = {
    "faster_rcnn": (FASTER_RCNN_BACKBONES, DetectionObjective),
    "retinanet": (RETINANET_BACKBONES, RetinaNetObjective),
}
EVALUATION_STAGES = ("val", "test")
LOGGED_SCORES = ("map", "map_50", "mean_iou")


class DetectorModule(TaskModule):
    """torchvision Faster R-CNN or RetinaNet (``architecture``; ``ARCHITECTURES`` lists each one's backbones) for
    labels 1..num_classes on [0, 1] RGB images.

    Images are resized to ``min_size``/``max_size`` and normalised inside the network. Training uses
    torchvision's own losses; validation and test run the attack objective (``val_loss``/``test_loss``
    is its deterministic loss) and log mAP, mAP@0.5 and the mean IoU of matched boxes.
    ``proposals_per_image`` is the RPN's eval-mode proposal count, the P of the objective; the
    ``*_samples_per_image`` are torchvision's anchors/proposals sampled per image for the losses
    (torchvision's 256/512 are sized for 800-pixel images; smaller values train faster on small ones).
    These three are Faster R-CNN's; RetinaNet scores every anchor and samples none.
    """

    task = "detection"

    def __init__(
        self,
        backbone: str = "mobilenet_v3",
        num_classes: int = 7,
        min_size: int = 128,
        max_size: int = 128,
        proposals_per_image: int = 100,
        rpn_samples_per_image: int = 128,
        roi_samples_per_image: int = 128,
        lr: float = 1e-3,
        weight_decay: float = 1e-4,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        architecture: str = "faster_rcnn",
    ) -> None:
        super().__init__()
        if architecture not in ARCHITECTURES:
            raise ValueError(f"architecture must be one of {sorted(ARCHITECTURES)}, got {architecture!r}")
        backbones, self.objective_class = ARCHITECTURES[architecture]
        if backbone not in backbones:
            raise ValueError(
                f"backbone must be one of {sorted(backbones)} for architecture {architecture!r}, got {backbone!r}"
            )
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes!r}")
        for name, value in (
            ("proposals_per_image", proposals_per_image),
            ("rpn_samples_per_image", rpn_samples_per_image),
            ("roi_samples_per_image", roi_samples_per_image),
        ):
            if value < 1:
                raise ValueError(f"{name} must be >= 1, got {value!r}")
        self.save_hyperparameters()
        image_mean, image_std = channel_statistics(3, mean, std)
        sampling = {}
        if architecture == "faster_rcnn":
            sampling = {
                "rpn_post_nms_top_n_test": proposals_per_image,
                "rpn_batch_size_per_image": rpn_samples_per_image,
                "box_batch_size_per_image": roi_samples_per_image,
            }
        self.model = backbones[backbone](
            num_classes=num_classes + 1,
            min_size=min_size,
            max_size=max_size,
            image_mean=list(image_mean),
            image_std=list(image_std),
            **sampling,
        )
        self.track_metrics(
            MetricCollection(
                {"map": MeanAveragePrecision(box_format="xyxy", iou_type="bbox"), "mean_iou": MatchedBoxIoU()}
            ),
            stages=EVALUATION_STAGES,
        )

    def forward(self, images: Tensor) -> list[dict[str, Tensor]]:
        """Eval-mode detections (boxes xyxy in input pixels, scores, labels) of images in [0, 1]."""
        return self.model(list(images))

    def objective(self) -> DetectionObjective | RetinaNetObjective:
        return self.objective_class(self.model)

    def step(self, batch: dict[str, Any], stage: str) -> Tensor:
        images, targets = list(batch["image"]), batch["target"]
        if stage == "train":
            loss = sum(self.model(images, targets).values())
            self.log_loss(stage, loss, len(images))
            return loss
        objective = self.objective()
        outputs = objective.forward(batch["image"])
        loss = objective.loss(outputs, targets).mean()
        self.log_loss(stage, loss, len(images))
        self.stage_metrics[f"{stage}_metrics"].update(objective.predict(outputs), targets)
        return loss

    def on_validation_epoch_end(self) -> None:
        self.log_scores("val")

    def on_test_epoch_end(self) -> None:
        self.log_scores("test")

    def log_scores(self, stage: str) -> None:
        """Log the epoch's mAP, mAP@0.5 and mean IoU (already reduced across ranks by torchmetrics)."""
        metrics = self.stage_metrics[f"{stage}_metrics"]
        scores = metrics.compute()
        self.log_dict({f"{stage}_{name}": scores[f"{stage}_{name}"] for name in LOGGED_SCORES})
        metrics.reset()
