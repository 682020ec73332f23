"""The training data that data-dependent attacks and detectors fit on during ``trainer.test``."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from lightning.pytorch.utilities import rank_zero_warn


def fit_dataloader(datamodule: Any, purpose: str) -> Iterable[Any]:
    """The datamodule's un-augmented, unsharded training loader (``fit_dataloader()``), or its
    ``train_dataloader()`` with a warning when it has none; ``purpose`` names the user in errors."""
    if datamodule is None:
        raise ValueError(f"{purpose} needs trainer.test(..., datamodule=...) to fit on its training split")
    if callable(getattr(datamodule, "fit_dataloader", None)):
        return datamodule.fit_dataloader()
    rank_zero_warn(
        f"{type(datamodule).__name__} has no fit_dataloader(); {purpose} fits on its train_dataloader(), "
        "which may augment, shuffle and shard across ranks"
    )
    return datamodule.train_dataloader()
