"""What every task LightningModule shares: the optimiser, one step for all stages, exact metric logging."""

from __future__ import annotations

import math
from typing import Any

import lightning as L
import torch
from torch import Tensor, nn
from torchmetrics import MeanMetric, MetricCollection

STAGES = ("train", "val", "test")


class TaskModule(L.LightningModule):
    """Base of the task modules: AdamW with cosine decay, per-stage torchmetrics, one step for all stages.

    Subclasses implement ``step(batch, stage) -> loss``. Losses and metrics are logged as torchmetrics
    objects named ``{stage}_{metric}``, so epoch values are exact under DDP with uneven ranks.
    """

    def __init__(self) -> None:
        super().__init__()
        self.losses = nn.ModuleDict({f"{stage}_loss": MeanMetric() for stage in STAGES})

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

    def step(self, batch: dict[str, Any], stage: str) -> Tensor:
        raise NotImplementedError

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        return self.step(batch, "train")

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
