"""The small from-scratch detector backbone: pyramid strides and channels, and its Faster R-CNN."""

import pytest
import torch

from lightning_modules import DetectorModule
from lightning_modules.small_backbone import SmallResNetFPN


def test_pyramid_levels_halve_from_stride_4_with_fpn_channels():
    backbone = SmallResNetFPN(widths=(8, 16, 24, 32, 40), fpn_channels=12)
    maps = backbone(torch.rand(2, 3, 64, 64))
    assert [tuple(m.shape) for m in maps.values()] == [(2, 12, 64 // s, 64 // s) for s in (4, 8, 16, 32, 64)]
    assert backbone.out_channels == 12
    with pytest.raises(ValueError, match="widths"):
        SmallResNetFPN(widths=(8,))


def test_small_faster_rcnn_trains_and_detects_in_input_pixels():
    module = DetectorModule("small", num_classes=2, min_size=64, max_size=64)
    images = torch.rand(2, 3, 64, 64)
    targets = [{"boxes": torch.tensor([[4.0, 4.0, 30.0, 40.0]]), "labels": torch.tensor([2])}] * 2
    module.train()
    losses = module.model(list(images), targets)
    assert set(losses) == {"loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg"}
    module.eval()
    with torch.no_grad():
        found = module(images)
    assert len(found) == 2 and all((d["boxes"] <= 64).all() and (d["labels"] <= 2).all() for d in found)
