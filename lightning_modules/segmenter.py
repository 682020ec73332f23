"""U-Net segmenter LightningModule: segmentation_models_pytorch with normalisation inside."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import segmentation_models_pytorch as smp
import torch.nn.functional as F
from segmentation_models_pytorch.losses import DiceLoss
from torch import Tensor
from torchmetrics import Accuracy, F1Score, JaccardIndex, MetricCollection

from lightning_modules.normalization import Normalize, channel_statistics
from lightning_modules.objectives import SegmentationObjective
from lightning_modules.task_module import TaskModule


def pad_to_multiple(images: Tensor, multiple: int) -> Tensor:
    """Zero-pad height and width at the bottom/right up to the next multiple of ``multiple``."""
    height, width = images.shape[-2:]
    return F.pad(images, (0, -width % multiple, 0, -height % multiple))


class SegmenterModule(TaskModule):
    """smp U-Net on [0, 1] images; Dice + cross-entropy loss; logs Jaccard, Dice and pixel accuracy.

    ``classes=1`` is binary (one logit, sigmoid); more classes use a softmax. Inputs of any size are
    padded to a multiple of the encoder stride 2**encoder_depth and the logits cropped back. The
    default (resnet18, small decoder) trains in seconds on 64-pixel CPU batches.
    """

    task = "segmentation"

    def __init__(
        self,
        encoder_name: str = "resnet18",
        in_channels: int = 1,
        classes: int = 1,
        encoder_depth: int = 5,
        decoder_channels: Sequence[int] | None = None,
        lr: float = 1e-3,
        weight_decay: float = 1e-4,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        adversarial_training: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(adversarial_training)
        if encoder_name not in smp.encoders.get_encoder_names() and not encoder_name.startswith("tu-"):
            raise ValueError(
                f"encoder_name={encoder_name!r} is not an smp encoder (see smp.encoders.get_encoder_names())"
            )
        if classes < 1:
            raise ValueError(f"classes must be >= 1, got {classes!r}")
        if not 1 <= encoder_depth <= 5:
            raise ValueError(f"encoder_depth must be in 1..5, got {encoder_depth!r}")
        self.save_hyperparameters()
        if decoder_channels is None:
            decoder_channels = tuple(8 * 2**level for level in reversed(range(encoder_depth)))
        self.normalize = Normalize(*channel_statistics(in_channels, mean, std))
        self.unet = smp.Unet(
            encoder_name,
            encoder_depth=encoder_depth,
            encoder_weights=None,
            decoder_channels=tuple(decoder_channels),
            in_channels=in_channels,
            classes=classes,
        )
        self.dice = DiceLoss(mode="binary" if classes == 1 else "multiclass", from_logits=True)
        task = (
            {"task": "binary"} if classes == 1 else {"task": "multiclass", "num_classes": classes, "average": "macro"}
        )
        self.track_metrics(
            MetricCollection(
                {
                    "jaccard": JaccardIndex(**task),
                    "dice": F1Score(**task),
                    "pixel_acc": Accuracy(**{**task, "average": "micro"}),
                }
            )
        )

    def forward(self, images: Tensor) -> Tensor:
        """Logits (B, classes, H, W) of images in [0, 1] of any height and width."""
        height, width = images.shape[-2:]
        padded = pad_to_multiple(self.normalize(images), 2**self.hparams.encoder_depth)
        return self.unet(padded)[..., :height, :width]

    def objective(self) -> SegmentationObjective:
        return SegmentationObjective(self, self.hparams.classes)

    def task_loss(self, outputs: Tensor, target: Tensor) -> Tensor:
        """Mean per-pixel cross entropy (the objective's loss) plus Dice loss."""
        masks = target.long()
        return self.objective().loss(outputs, masks).mean() + self.dice(outputs, masks)

    def log_outputs(self, stage: str, outputs: Tensor, target: Tensor, loss: Tensor) -> None:
        masks = target.long()
        self.log_loss(stage, loss, len(masks))
        self.log_metrics(stage, self.objective().predict(outputs.detach()), masks)
