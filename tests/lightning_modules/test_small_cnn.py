"""The small CNN: a timm name that the classifier builds like any other, for inputs of any size."""

import pytest
import timm
import torch

from lightning_modules.classifier import ClassifierModule


def test_classifier_builds_small_cnn_by_name_for_any_input_size():
    module = ClassifierModule("small_cnn", num_classes=3, in_channels=1).eval()
    for size in (28, 128):
        images = torch.rand(2, 1, size, size)
        assert module(images).shape == (2, 3)
        assert module.features(images).shape == (2, module.backbone.num_features)
    with torch.device("meta"):
        resnet18 = sum(p.numel() for p in timm.create_model("resnet18", num_classes=0).parameters())
    assert sum(p.numel() for p in module.backbone.parameters()) * 20 < resnet18


def test_small_cnn_has_no_pretrained_weights():
    with pytest.raises(ValueError, match="small_cnn.*pretrained=False"):
        timm.create_model("small_cnn", pretrained=True)
