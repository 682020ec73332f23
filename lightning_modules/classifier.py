"""Image classifier LightningModule: a timm network with normalisation inside and an attack objective."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics import AUROC, Accuracy, MetricCollection

from lightning_modules.normalization import Normalize, channel_statistics
from lightning_modules.objectives import ClassificationObjective
from lightning_modules.pretrained import create_timm_model
from lightning_modules.task_module import TaskModule

MA_HIDDEN_FEATURES = 128
MA_DROPOUT = 0.2


def ma_neck(in_features: int) -> nn.Sequential:
    """Ma et al. 2020 (Sec. 4) head before the K-way layer: dense 128 -> ReLU -> dropout 0.2."""
    return nn.Sequential(nn.Linear(in_features, MA_HIDDEN_FEATURES), nn.ReLU(), nn.Dropout(MA_DROPOUT))


class ClassifierModule(TaskModule):
    """Any timm network by name (also ``small_cnn``, lightning_modules/small_cnn.py) on [0, 1] images; logs
    loss, accuracy and (one-vs-rest) AUC per stage.

    ``features`` gives the penultimate deep features (the pooled backbone output, or the dense-128
    layer with ``ma_head``): the input of the final K-way layer.
    """

    task = "classification"

    def __init__(
        self,
        model_name: str = "resnet18",
        num_classes: int = 5,
        in_channels: int = 3,
        pretrained: bool = False,
        ma_head: bool = False,
        lr: float = 1e-3,
        weight_decay: float = 1e-4,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        adversarial_training: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(adversarial_training)
        if num_classes < 2:
            raise ValueError(f"num_classes must be >= 2, got {num_classes!r}")
        self.save_hyperparameters()
        self.normalize = Normalize(*channel_statistics(in_channels, mean, std))
        self.backbone = create_timm_model(model_name, pretrained, in_chans=in_channels, num_classes=0)
        width = getattr(self.backbone, "head_hidden_size", None) or self.backbone.num_features
        self.neck = ma_neck(width) if ma_head else nn.Identity()
        self.classifier = nn.Linear(MA_HIDDEN_FEATURES if ma_head else width, num_classes)
        task = "binary" if num_classes == 2 else "multiclass"
        self.track_metrics(
            MetricCollection(
                {
                    "acc": Accuracy(task=task, num_classes=num_classes),
                    "auc": AUROC(task=task, num_classes=num_classes),
                }
            )
        )

    def features(self, images: Tensor) -> Tensor:
        """Penultimate features (B, D) of images in [0, 1]."""
        return self.neck(self.backbone(self.normalize(images)))

    def forward(self, images: Tensor) -> Tensor:
        """Logits (B, K) of images in [0, 1]."""
        return self.classifier(self.features(images))

    def objective(self) -> ClassificationObjective:
        return ClassificationObjective(self, self.hparams.num_classes)

    def task_loss(self, outputs: Tensor, target: Tensor) -> Tensor:
        """Mean cross entropy of the logits."""
        return F.cross_entropy(outputs, target)

    def log_outputs(self, stage: str, outputs: Tensor, target: Tensor, loss: Tensor) -> None:
        probabilities = outputs.detach().softmax(dim=1)
        scores = probabilities[:, 1] if self.hparams.num_classes == 2 else probabilities
        self.log_loss(stage, loss, len(target))
        self.log_metrics(stage, scores, target)
