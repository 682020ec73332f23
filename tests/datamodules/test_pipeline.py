"""Splits, channel conversion, resizing, augmentation and collation shared by every datamodule."""

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from datamodules.base import ExampleDataset, _reseed_worker, collate
from datamodules.pipeline import Boxes, Example, Pipeline, build_augmentation, resize_example, to_channels
from datamodules.splits import stratified_split
from datamodules.synthetic import SyntheticFundusDataModule
from tests.datamodules.files import half_bright


def test_stratified_split_is_a_deterministic_partition_with_proportional_classes():
    labels = np.repeat(np.arange(4), [50, 30, 20, 100])
    splits = stratified_split(labels, 0.1, 0.2, seed=3)
    assert {k: v.tolist() for k, v in splits.items()} == {
        k: v.tolist() for k, v in stratified_split(labels, 0.1, 0.2, seed=3).items()
    }
    joined = np.concatenate(list(splits.values()))
    assert sorted(joined.tolist()) == list(range(len(labels)))
    assert (len(splits["val"]), len(splits["test"])) == (20, 40)
    assert splits["test"].tolist() != stratified_split(labels, 0.1, 0.2, seed=4)["test"].tolist()
    for label, count in zip(range(4), [50, 30, 20, 100], strict=True):
        assert abs(np.sum(labels[splits["test"]] == label) - 0.2 * count) <= 1
        assert abs(np.sum(labels[splits["val"]] == label) - 0.1 * count) <= 1


def test_small_sets_still_fill_every_split():
    splits = stratified_split(np.arange(10) % 5, 0.2, 0.2, seed=0)
    assert [len(splits[s]) for s in ("train", "val", "test")] == [6, 2, 2]


@pytest.mark.parametrize(
    ("arguments", "name"),
    [
        ({"val_fraction": -0.1}, "val_fraction"),
        ({"val_fraction": 0.5, "test_fraction": 0.5}, "val_fraction \\+ test_fraction"),
        ({"channels": 2}, "channels"),
        ({"size": 0}, "size"),
        ({"flip_p": 1.5}, "flip_p"),
    ],
)
def test_datamodule_arguments_are_checked_at_construction(arguments, name):
    with pytest.raises(ValueError, match=name):
        SyntheticFundusDataModule(num_samples=5, **arguments)


def test_channel_conversion_repeats_grey_and_takes_luminance_of_colour():
    grey = np.arange(12, dtype=np.uint8).reshape(3, 4, 1)
    assert np.array_equal(to_channels(grey, 3), np.repeat(grey, 3, axis=2))
    colour = np.zeros((2, 2, 3), dtype=np.uint8)
    colour[..., 1] = 200
    assert to_channels(colour, 1)[0, 0, 0] == round(0.587 * 200)


def test_resize_scales_boxes_and_keeps_masks_binary():
    image = np.zeros((40, 80, 3), dtype=np.uint8)
    example = Example(image, Boxes(np.array([[8.0, 4.0, 40.0, 20.0]]), np.array([3])), "a")
    resized = resize_example(example, 20)
    assert resized.image.shape == (20, 20, 3)
    np.testing.assert_allclose(resized.target.boxes, [[2.0, 2.0, 10.0, 10.0]])
    mask = (np.random.default_rng(0).random((40, 80)) > 0.5).astype(np.uint8)
    assert set(np.unique(resize_example(Example(image, mask, "m"), 16).target)) <= {0, 1}


def test_pipeline_outputs_float_images_in_unit_range_and_int64_targets():
    image, mask = half_bright(32, left=True)
    sample = Pipeline(16, 3)(Example(image[..., None], (mask > 0).astype(np.uint8), "x"))
    assert sample["image"].shape == (3, 16, 16) and sample["image"].dtype == torch.float32
    assert 0.0 <= sample["image"].min() and sample["image"].max() <= 1.0
    assert sample["target"].dtype == torch.int64 and sample["target"].shape == (16, 16)


def test_forced_flip_moves_the_mask_with_its_image():
    image, mask = half_bright(32, left=True)
    flip = build_augmentation("segmentation", flip_p=1.0, rotate_limit=0.0, shift_limit=0.0, seed=0)
    sample = Pipeline(32, 1, flip)(Example(image[..., None], (mask > 0).astype(np.uint8), "x"))
    bright = sample["image"][0] > 0.5
    assert bright[:, 16:].all() and not bright[:, :16].any()
    assert torch.equal(sample["target"].bool(), bright)


def test_random_rotation_and_shift_keep_mask_on_the_bright_region():
    mask = np.zeros((48, 48), dtype=np.uint8)
    mask[10:30, 14:40] = 1
    image = np.where(mask > 0, 230, 20).astype(np.uint8)[..., None]
    augmentation = build_augmentation("segmentation", 0.5, rotate_limit=20.0, shift_limit=0.1, seed=1)
    pipeline = Pipeline(48, 1, augmentation)
    moved = 0
    for _ in range(5):
        sample = pipeline(Example(image, mask, "x"))
        bright = sample["image"][0] > 0.5
        assert (bright == sample["target"].bool()).float().mean() > 0.98
        moved += not torch.equal(sample["target"], torch.from_numpy(mask).long())
    assert moved >= 4


def test_boxes_follow_a_forced_flip_and_stay_around_their_object():
    image = np.zeros((40, 60, 3), dtype=np.uint8)
    image[5:15, 4:20] = 255
    example = Example(image, Boxes(np.array([[4.0, 5.0, 20.0, 15.0]], np.float32), np.array([2])), "b")
    flip = build_augmentation("detection", flip_p=1.0, rotate_limit=0.0, shift_limit=0.0, seed=0)
    target = Pipeline(60, 3, flip)(example)["target"]
    # resized to 60 x 60 (y scaled by 1.5), then mirrored: x -> 60 - x
    torch.testing.assert_close(target["boxes"], torch.tensor([[40.0, 7.5, 56.0, 22.5]]))
    assert target["labels"].tolist() == [2]
    tilt = build_augmentation("detection", flip_p=0.0, rotate_limit=15.0, shift_limit=0.05, seed=5)
    sample = Pipeline(60, 3, tilt)(example)
    rows, columns = torch.nonzero(sample["image"][0] > 0.5, as_tuple=True)
    x0, y0, x1, y1 = sample["target"]["boxes"][0].tolist()
    assert x0 <= columns.min() + 1 and columns.max() <= x1 and y0 <= rows.min() + 1 and rows.max() <= y1


def test_collate_stacks_tensors_and_keeps_detection_targets_as_a_list():
    def sample(target):
        return {"image": torch.zeros(1, 4, 4), "target": target, "id": "s"}

    classes = collate([sample(torch.tensor(1)), sample(torch.tensor(3))])
    assert classes["image"].shape == (2, 1, 4, 4) and classes["target"].tolist() == [1, 3]
    boxes = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}
    detection = collate([sample(boxes), sample(boxes)])
    assert isinstance(detection["target"], list) and len(detection["target"]) == 2
    assert detection["id"] == ["s", "s"]


def test_only_training_data_is_augmented():
    dm = SyntheticFundusDataModule(num_samples=10, size=32, flip_p=1.0, val_fraction=0.2, test_fraction=0.2)
    dm.setup()
    for split in ("val", "test"):
        dataset = dm.datasets[split]
        torch.testing.assert_close(dataset[0]["image"], Pipeline(32, 3)(dataset.records[0])["image"])
    train = dm.datasets["train"]
    assert not torch.equal(train[0]["image"], Pipeline(32, 3)(train.records[0])["image"])


def test_each_dataloader_worker_draws_its_own_augmentations():
    image, mask = half_bright(16, left=True)
    example = Example(image[..., None], (mask > 0).astype(np.uint8), "same")
    augmentation = build_augmentation("segmentation", 0.5, rotate_limit=30.0, shift_limit=0.1, seed=0)
    dataset = ExampleDataset([example] * 4, lambda record: record, Pipeline(16, 1, augmentation))
    loader = DataLoader(
        dataset, batch_size=2, num_workers=2, collate_fn=collate, worker_init_fn=_reseed_worker
    )
    first_worker, second_worker = (batch["image"] for batch in list(loader)[:2])
    assert not torch.equal(first_worker, second_worker)
