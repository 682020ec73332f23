"""What every task LightningModule shares: the optimiser, one step for all stages, exact metric logging."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import lightning as L
import torch
from torch import Tensor, nn
from torchmetrics import MeanMetric, MetricCollection

from lightning_modules.adversarial_training import AdversarialTraining

STAGES = ("train", "val", "test")


class TaskModule(L.LightningModule):
    """Base of the task modules: AdamW with cosine decay, per-stage torchmetrics, one step for all stages.

    Subclasses implement ``task_loss`` and ``log_outputs`` (or override ``step(batch, stage) -> loss``).
    Losses and metrics are logged as torchmetrics objects named ``{stage}_{metric}``, so epoch values are
    exact under DDP with uneven ranks. With ``adversarial_training`` (the settings of
    ``AdversarialTraining``, a mapping as configs give it) each training step minimises that loss instead,
    and ``train_loss`` and the train metrics are those of the adversarial images.
    """

    def __init__(self, adversarial_training: Mapping[str, Any] | None = None) -> None:
        super().__init__()
        self.losses = nn.ModuleDict({f"{stage}_loss": MeanMetric() for stage in STAGES})
        self.adversarial_training = (
            None if adversarial_training is None else AdversarialTraining.from_settings(adversarial_training)
        )

    def track_metrics(self, metrics: MetricCollection, stages: tuple[str, ...] = STAGES) -> None:
        """Keep one copy of ``metrics`` per stage, prefixed with the stage name."""
        self.stage_metrics = nn.ModuleDict({f"{stage}_metrics": metrics.clone(prefix=f"{stage}_") for stage in stages})

    def log_loss(self, stage: str, loss: Tensor, batch_size: int) -> None:
        metric = self.losses[f"{stage}_loss"]
        metric.update(loss.detach(), weight=batch_size)
        self.log(f"{stage}_loss", metric, on_step=False, on_epoch=True, batch_size=batch_size)

    def log_metrics(self, stage: str, *inputs: Any) -> None:
        """Update the stage's metrics with ``inputs`` (their ``update`` arguments) and log them per epoch."""
        metrics = self.stage_metrics[f"{stage}_metrics"]
        metrics.update(*inputs)
        self.log_dict(metrics, on_step=False, on_epoch=True)

    def task_loss(self, outputs: Any, target: Any) -> Tensor:
        """The training loss (a scalar) of the module's ``outputs`` against ``target``."""
        raise NotImplementedError

    def log_outputs(self, stage: str, outputs: Any, target: Any, loss: Tensor) -> None:
        """Log the batch's ``loss`` and update the stage's metrics with its ``outputs``."""
        raise NotImplementedError

    def step(self, batch: dict[str, Any], stage: str) -> Tensor:
        outputs = self(batch["image"])
        loss = self.task_loss(outputs, batch["target"])
        self.log_outputs(stage, outputs, batch["target"], loss)
        return loss

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        if self.adversarial_training is None:
            return self.step(batch, "train")
        result = self.adversarial_training.training_loss(self, batch["image"], batch["target"], batch.get("id"))
        self.log_outputs("train", result.outputs, batch["target"], result.loss)
        return result.loss

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self.step(batch, "val")

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self.step(batch, "test")

    def configure_optimizers(self) -> dict[str, Any]:
        """AdamW (``hparams.lr``, ``hparams.weight_decay``), the learning rate decayed to 0 along a cosine
        over the fit's steps; constant when the fit has no step limit."""
        hparams = self.hparams
        optimizer = torch.optim.AdamW(self.parameters(), lr=hparams.lr, weight_decay=hparams.weight_decay)
        steps = self.trainer.estimated_stepping_batches
        if math.isinf(steps):
            return {"optimizer": optimizer}
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, int(steps)))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}
