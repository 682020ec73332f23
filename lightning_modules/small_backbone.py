"""A small ResNet with a feature pyramid, trained from scratch (no weights): the detector backbone that learns
the 128-pixel endoscopy phantom on a CPU in minutes (He et al. 2016 basic blocks; Lin et al. 2017 FPN)."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

from torch import Tensor, nn
from torchvision.models.resnet import BasicBlock
from torchvision.ops.feature_pyramid_network import FeaturePyramidNetwork, LastLevelMaxPool


def residual_stage(in_channels: int, out_channels: int) -> nn.Sequential:
    """Two basic blocks, the first halving the resolution (1x1 strided projection on its shortcut)."""
    shortcut = nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, 2, bias=False), nn.BatchNorm2d(out_channels))
    return nn.Sequential(BasicBlock(in_channels, out_channels, 2, shortcut), BasicBlock(out_channels, out_channels))


class SmallResNetFPN(nn.Module):
    """A strided 3x3 stem to ``widths[0]`` channels, then one residual stage per further width (strides 4, 8,
    16, 32 for five widths), and an FPN of ``fpn_channels`` over the stages plus a max-pooled top level:
    torchvision's backbone interface (an ordered dict of maps, ``out_channels``)."""

    def __init__(self, widths: Sequence[int] = (16, 32, 64, 96, 128), fpn_channels: int = 64) -> None:
        super().__init__()
        if len(widths) < 2 or min(widths) < 1 or fpn_channels < 1:
            raise ValueError(f"widths needs two or more positive entries and fpn_channels >= 1, got {widths}, "
                             f"{fpn_channels}")
        self.stem = nn.Sequential(
            nn.Conv2d(3, widths[0], 3, 2, 1, bias=False), nn.BatchNorm2d(widths[0]), nn.ReLU(inplace=True)
        )
        self.stages = nn.ModuleList(residual_stage(a, b) for a, b in zip(widths[:-1], widths[1:], strict=True))
        self.fpn = FeaturePyramidNetwork(list(widths[1:]), fpn_channels, LastLevelMaxPool())
        self.out_channels = fpn_channels

    def forward(self, images: Tensor) -> OrderedDict[str, Tensor]:
        features, maps = self.stem(images), OrderedDict()
        for index, stage in enumerate(self.stages):
            features = stage(features)
            maps[str(index)] = features
        return self.fpn(maps)
