"""A small plain CNN registered with timm as ``small_cnn``: the small end of a model-size comparison."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from timm.models import register_model
from torch import Tensor, nn

SMALL_CNN_WIDTHS = (32, 64, 128)
TIMM_ONLY_ARGUMENTS = ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir")  # what timm passes every model


class SmallCNN(nn.Module):
    """Conv blocks (3x3 conv, BatchNorm, ReLU, 2x2 max pool) of ``widths`` channels, global average pooling
    and a linear head (none when ``num_classes=0``): about 0.1 M parameters, inputs of 8 px and more."""

    def __init__(self, in_chans: int = 3, num_classes: int = 1000, widths: Sequence[int] = SMALL_CNN_WIDTHS) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = in_chans
        for width in widths:
            layers += [nn.Conv2d(channels, width, 3, padding=1, bias=False), nn.BatchNorm2d(width),
                       nn.ReLU(inplace=True), nn.MaxPool2d(2)]
            channels = width
        self.blocks = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.num_features = channels
        self.head = nn.Linear(channels, num_classes) if num_classes else nn.Identity()

    def forward(self, images: Tensor) -> Tensor:
        """Logits (B, num_classes), or pooled features (B, num_features) without a head."""
        return self.head(self.blocks(images))


@register_model
def small_cnn(pretrained: bool = False, **kwargs: Any) -> SmallCNN:
    """timm entry point of :class:`SmallCNN`; it has no pretrained weights."""
    if pretrained:
        raise ValueError("model_name='small_cnn' has no pretrained weights; pass pretrained=False")
    for name in TIMM_ONLY_ARGUMENTS:
        kwargs.pop(name, None)
    return SmallCNN(**kwargs)
