"""Gathering Python objects across DDP ranks through Lightning's strategy."""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl


def gather_objects(trainer: pl.Trainer, obj: Any) -> list[Any]:
    """``obj`` of every rank, in rank order: one strategy broadcast per rank (Lightning has no object
    all-gather; uneven sizes are fine)."""
    return [trainer.strategy.broadcast(obj, src=rank) for rank in range(trainer.world_size)]
