"""Lung fields as boxes: connected components of lung masks, labelled by side."""

import numpy as np
import pytest
import torch

from datamodules import LungFieldDetectionDataModule
from datamodules.lung_fields import lung_field_boxes
from tests.datamodules.files import write_image
from tests.realdata import require_shared


def two_lungs(size: int = 32) -> np.ndarray:
    """A mask with a lung on each side of the image and a one-pixel JPEG speck."""
    mask = np.zeros((size, size), dtype=np.uint8)
    mask[4:28, 3:13] = 255  # image left: the patient's right lung
    mask[6:26, 18:30] = 255
    mask[0, 31] = 255
    return mask


def test_components_become_side_labelled_boxes_and_specks_are_dropped():
    found = lung_field_boxes(two_lungs(), min_area=0.01)
    order = np.argsort(found.boxes[:, 0])
    np.testing.assert_array_equal(found.boxes[order], [[3, 4, 13, 28], [18, 6, 30, 26]])
    np.testing.assert_array_equal(found.labels[order], [1, 2])
    assert len(lung_field_boxes(two_lungs(), min_area=0.0).labels) == 3  # the speck counts at min_area 0
    assert len(lung_field_boxes(np.zeros((8, 8), np.uint8), 0.01).labels) == 0


def test_datamodule_scales_the_boxes_and_checks_min_area(tmp_path):
    for split in ("train", "valid", "test"):
        write_image(tmp_path / split / "images" / "a.png", np.full((32, 32), 100, np.uint8))
        write_image(tmp_path / split / "masks" / "a.png", two_lungs())
    dm = LungFieldDetectionDataModule(str(tmp_path), size=16, batch_size=1, augment=False)
    target = next(iter(dm.test_dataloader()))["target"][0]
    order = target["boxes"][:, 0].argsort()
    torch.testing.assert_close(target["boxes"][order], torch.tensor([[1.5, 2, 6.5, 14], [9, 3, 15, 13]]))
    assert dm.task == "detection" and dm.num_classes == 2 and dm.hparams.flip_p == 0.0
    with pytest.raises(ValueError, match="min_area"):
        LungFieldDetectionDataModule(str(tmp_path), min_area=1.5)


@pytest.mark.realdata
def test_chest_xray_lung_fields():
    root = require_shared("cxr_lung_seg")
    dm = LungFieldDetectionDataModule(str(root), size=64, batch_size=8, augment=False)
    batch = next(iter(dm.test_dataloader()))
    for target in batch["target"]:
        assert sorted(target["labels"].tolist()) == [1, 2]  # one box per lung
        right, left = target["boxes"][target["labels"].argsort()]
        assert right[0] < left[0] and (target["boxes"][:, 2:] - target["boxes"][:, :2]).min() > 8
