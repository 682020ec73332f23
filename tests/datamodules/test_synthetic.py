"""The phantom generators and their datamodules: determinism, ranges and ground-truth statistics."""

import numpy as np
import pytest
import torch

from datamodules import SyntheticEndoscopyDataModule, SyntheticFundusDataModule, SyntheticLungCTDataModule
from datamodules.phantoms.endoscopy import render_endoscopy
from datamodules.phantoms.fundus import render_fundus
from datamodules.phantoms.lung_ct import render_lung_ct
from datamodules.synthetic import sample_rng

MODULES = [
    (SyntheticFundusDataModule, {"size": 32}, (3, 32, 32)),
    (SyntheticLungCTDataModule, {"size": 32}, (1, 32, 32)),
    (SyntheticEndoscopyDataModule, {"size": 48}, (3, 48, 48)),
]


@pytest.mark.parametrize(("cls", "arguments", "shape"), MODULES)
def test_same_seed_same_data_other_seed_other_data(cls, arguments, shape):
    def first_test_batch(seed):
        dm = cls(num_samples=20, seed=seed, batch_size=4, **arguments)
        dm.setup()
        return next(iter(dm.test_dataloader()))

    batch, again, other = first_test_batch(0), first_test_batch(0), first_test_batch(1)
    assert batch["image"].shape == (4, *shape) and batch["image"].dtype == torch.float32
    assert 0.0 <= batch["image"].min() and batch["image"].max() <= 1.0
    assert torch.equal(batch["image"], again["image"]) and batch["id"] == again["id"]
    assert not torch.equal(batch["image"], other["image"])


@pytest.mark.parametrize(("cls", "arguments", "shape"), MODULES)
def test_a_sample_depends_only_on_seed_and_index(cls, arguments, shape):
    dm = cls(num_samples=12, seed=7, **arguments)
    dm.setup()
    records = [r for ds in dm.datasets.values() for r in ds.records]
    assert len(records) == 12 and len({r.id for r in records}) == 12
    record = next(r for r in records if r.id.endswith("/9"))
    alone = dm.render(9, sample_rng(7, 9))
    assert np.array_equal(record.image, alone.image)


def test_fundus_grades_are_balanced_across_splits_and_attributes_are_set():
    dm = SyntheticFundusDataModule(num_samples=50, size=32, val_fraction=0.2, test_fraction=0.2)
    dm.setup()
    assert (dm.task, dm.num_classes, dm.in_channels, dm.image_size) == ("classification", 5, 3, 32)
    for split, per_grade in (("train", 6), ("val", 2), ("test", 2)):
        grades = [record.target for record in dm.datasets[split].records]
        assert np.bincount(grades, minlength=5).tolist() == [per_grade] * 5


def test_fundus_lesion_area_rises_with_grade_and_the_image_looks_like_a_fundus():
    fractions = []
    for grade in range(5):
        phantoms = [render_fundus(grade, 64, sample_rng(grade, i)) for i in range(8)]
        fractions.append(np.mean([p.lesions.mean() for p in phantoms]))
        image = phantoms[0].image.astype(float)
        assert image[:3, :3].max() < 10  # outside the circular field of view
        centre = image[24:40, 24:40].reshape(-1, 3).mean(axis=0)
        assert centre[0] > centre[1] > centre[2]  # orange-red retina
    assert fractions[0] == 0.0
    assert all(low < high for low, high in zip(fractions, fractions[1:], strict=False))


def test_fundus_grade_outside_scale_is_refused():
    with pytest.raises(ValueError, match="grade"):
        render_fundus(5, 32, sample_rng(0, 0))


def test_lung_phantom_masks_dark_lungs_and_not_the_air_outside():
    from datamodules.nifti import window

    for index in range(6):
        phantom = render_lung_ct(64, sample_rng(3, index))
        image, lungs = window(phantom.hu, -1000.0, 400.0), phantom.lungs.astype(bool)
        assert 0.05 < lungs.mean() < 0.4
        assert image[lungs].mean() < 0.35 < image[~lungs & (image > 0.2)].mean()
        assert not lungs[0].any() and not lungs[:, 0].any()  # air around the body is not lung
    dm = SyntheticLungCTDataModule(num_samples=4, size=32, val_fraction=0.0, test_fraction=0.0, augment=False)
    batch = next(iter(dm.train_dataloader()))
    assert batch["target"].dtype == torch.int64 and (batch["target"].sum(dim=(1, 2)) > 0).all()
    assert (dm.task, dm.num_classes, dm.in_channels) == ("segmentation", 2, 1)


def test_endoscopy_boxes_are_valid_and_every_class_appears():
    labels = []
    for index in range(40):
        phantom = render_endoscopy(96, sample_rng(0, index))
        boxes = phantom.boxes
        assert boxes.dtype == np.float32 and len(boxes) == len(phantom.labels) >= 1
        assert (boxes[:, :2] >= 0).all() and (boxes[:, 2:] <= 96).all()
        assert (boxes[:, 2:] - boxes[:, :2] >= 3).all()
        labels += phantom.labels.tolist()
    assert set(labels) == set(range(1, 8))


def test_endoscopy_specularities_are_bright_inside_their_boxes():
    for index in range(30):
        phantom = render_endoscopy(96, sample_rng(1, index))
        for (x0, y0, x1, y1), label in zip(phantom.boxes.astype(int), phantom.labels, strict=True):
            if label == 1:
                assert phantom.image[y0:y1, x0:x1].max() > 240


def test_endoscopy_datamodule_targets_survive_augmentation():
    dm = SyntheticEndoscopyDataModule(
        num_samples=16, size=64, batch_size=16, val_fraction=0.0, test_fraction=0.0
    )
    batch = next(iter(dm.train_dataloader()))
    assert dm.task == "detection" and dm.num_classes == 7 and len(dm.class_names) == 7
    for target in batch["target"]:
        boxes = target["boxes"]
        assert boxes.shape[1] == 4 and ((boxes[:, 2:] - boxes[:, :2]) > 0).all()
        assert (boxes >= 0).all() and (boxes <= 64).all()
        assert ((target["labels"] >= 1) & (target["labels"] <= 7)).all()


def test_referable_labels_split_grades_at_moderate_dr():
    graded = SyntheticFundusDataModule(num_samples=20, size=32, seed=3)
    referable = SyntheticFundusDataModule(num_samples=20, size=32, seed=3, referable=True)
    graded.setup()
    referable.setup()
    grades = {r.id: r.target for ds in graded.datasets.values() for r in ds.records}
    labels = {r.id: r.target for ds in referable.datasets.values() for r in ds.records}
    assert labels == {key: int(grade >= 2) for key, grade in grades.items()}
    assert referable.num_classes == 2 and graded.num_classes == 5
    assert referable.class_names == ("non-referable", "referable")


def test_fit_loader_is_the_whole_train_split_in_order_and_unaugmented():
    dm = SyntheticFundusDataModule(num_samples=30, size=32, seed=1, batch_size=4)
    dm.setup()
    first, second = ([batch for batch in dm.fit_dataloader()] for _ in range(2))
    assert [i for batch in first for i in batch["id"]] == [r.id for r in dm.datasets["train"].records]
    assert all(torch.equal(a["image"], b["image"]) for a, b in zip(first, second, strict=True))
    augmented = next(iter(dm.train_dataloader()))
    assert len(augmented["id"]) == 4 and set(augmented["id"]) <= {r.id for r in dm.datasets["train"].records}
