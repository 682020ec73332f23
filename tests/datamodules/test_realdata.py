"""The datamodules on the real sets in ../shared/data (skipped with a reason when they are absent)."""

import pytest
import torch

from datamodules import EndoscopyArtefactDataModule, LungSegmentationDataModule, MedMNISTDataModule
from tests.realdata import require_shared

pytestmark = pytest.mark.realdata


@pytest.mark.parametrize(
    ("flag", "classes", "sizes"),
    [
        ("retinamnist", 5, (1080, 120, 400)),
        ("breastmnist", 2, (546, 78, 156)),
        ("pneumoniamnist", 2, (2428, 270, 468)),
    ],
)
def test_medmnist_sets(flag, classes, sizes):
    root = require_shared(f"medmnist/{flag}.npz").parent
    dm = MedMNISTDataModule(flag, str(root), size=28, channels=3, batch_size=64)
    dm.setup()
    assert dm.num_classes == classes and len(dm.class_names) == classes
    assert tuple(len(dm.datasets[s]) for s in ("train", "val", "test")) == sizes
    batch = next(iter(dm.val_dataloader()))
    assert batch["image"].shape == (64, 3, 28, 28) and set(batch["target"].tolist()) <= set(range(classes))


def test_chest_xray_lung_masks():
    root = require_shared("cxr_lung_seg")
    dm = LungSegmentationDataModule(str(root), size=64, batch_size=8, augment=False)
    dm.setup()
    assert tuple(len(dm.datasets[s]) for s in ("train", "val", "test")) == (905, 169, 58)
    batch = next(iter(dm.test_dataloader()))
    lung_fraction = batch["target"].float().mean(dim=(1, 2))
    assert batch["image"].shape == (8, 1, 64, 64) and ((lung_fraction > 0.05) & (lung_fraction < 0.6)).all()
    # lungs are darker than the rest of the chest film
    assert (
        batch["image"][:, 0][batch["target"] == 1].mean() < batch["image"][:, 0][batch["target"] == 0].mean()
    )


def test_ct_slices_skip_the_two_orphan_masks():
    root = require_shared("lung_ct_seg_mini")
    with pytest.warns(UserWarning, match="422.*439"):
        dm = LungSegmentationDataModule(str(root), size=64, val_fraction=0.2, test_fraction=0.2)
        dm.setup()
    assert sum(len(ds) for ds in dm.datasets.values()) == 22


def test_ead2019_frames():
    root = require_shared("ead2019_mini")
    dm = EndoscopyArtefactDataModule(
        str(root), format="yolo", size=128, val_fraction=0.0, test_fraction=0.0, augment=False, batch_size=8
    )
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (5, 3, 128, 128)
    boxes = torch.cat([t["boxes"] for t in batch["target"]])
    labels = torch.cat([t["labels"] for t in batch["target"]])
    assert len(boxes) == 30 and (boxes >= 0).all() and (boxes <= 128).all()
    assert ((labels >= 1) & (labels <= 7)).all()
