"""Mean/std normalisation that lives inside a model, so its inputs stay in [0, 1]."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _per_channel(name: str, values: Sequence[float], in_channels: int) -> tuple[float, ...]:
    values = tuple(float(v) for v in values)
    if len(values) == 1:
        values *= in_channels
    if len(values) != in_channels:
        raise ValueError(f"{name} must have 1 or in_channels={in_channels} values, got {values!r}")
    return values


def channel_statistics(
    in_channels: int, mean: Sequence[float] | None, std: Sequence[float] | None
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel (mean, std): the given values, else ImageNet's for 3 channels and 0.5/0.5 otherwise."""
    if in_channels < 1:
        raise ValueError(f"in_channels must be >= 1, got {in_channels!r}")
    default_mean, default_std = (IMAGENET_MEAN, IMAGENET_STD) if in_channels == 3 else ((0.5,), (0.5,))
    mean = _per_channel("mean", default_mean if mean is None else mean, in_channels)
    std = _per_channel("std", default_std if std is None else std, in_channels)
    if min(std) <= 0:
        raise ValueError(f"std must be > 0, got {std!r}")
    return mean, std


class Normalize(nn.Module):
    """``(x - mean) / std`` per channel, with mean and std as buffers (saved in checkpoints)."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, images: Tensor) -> Tensor:
        return (images - self.mean) / self.std
