"""MedMNISTDataModule on npz files written here: label shapes, grey/RGB, class counts, errors."""

import numpy as np
import pytest
import torch

from datamodules import MedMNISTDataModule
from tests.datamodules.files import write_medmnist

COUNTS = {"train": 12, "val": 4, "test": 6}


@pytest.mark.parametrize(("rgb", "column"), [(False, False), (True, True), (False, True)])
def test_official_splits_with_either_label_shape(tmp_path, rgb, column):
    write_medmnist(tmp_path / "toymnist.npz", COUNTS, num_classes=3, rgb=rgb, column=column)
    dm = MedMNISTDataModule("toymnist", str(tmp_path), size=28, channels=3, batch_size=32, augment=False)
    dm.setup()
    assert (dm.task, dm.num_classes, dm.in_channels, dm.image_size) == ("classification", 3, 3, 28)
    assert {split: len(ds) for split, ds in dm.datasets.items()} == COUNTS
    batch = next(iter(dm.test_dataloader()))
    assert batch["image"].shape == (6, 3, 28, 28) and batch["image"].dtype == torch.float32
    assert batch["target"].dtype == torch.int64 and batch["target"].tolist() == [0, 1, 2, 0, 1, 2]
    assert batch["id"][0] == "toymnist/test/0"
    with np.load(tmp_path / "toymnist.npz") as archive:
        first = archive["test_images"][0].astype(np.float32) / 255.0
    expected = torch.from_numpy(first if rgb else np.repeat(first[..., None], 3, axis=2)).permute(2, 0, 1)
    torch.testing.assert_close(batch["image"][0], expected)


def test_resizes_and_converts_to_one_channel(tmp_path):
    write_medmnist(tmp_path / "toy.npz", COUNTS, num_classes=2, rgb=True, column=True)
    dm = MedMNISTDataModule("toy", str(tmp_path), size=64, channels=1, augment=False)
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (12, 1, 64, 64)


def test_explicit_class_count_is_validated(tmp_path):
    write_medmnist(tmp_path / "toy.npz", COUNTS, num_classes=4, rgb=False, column=False)
    assert MedMNISTDataModule("toy", str(tmp_path), num_classes=6).num_classes == 6
    with pytest.raises(ValueError, match="num_classes=3.*label 3"):
        MedMNISTDataModule("toy", str(tmp_path), num_classes=3)


def test_missing_file_keys_and_multilabel_sets_are_refused(tmp_path):
    with pytest.raises(FileNotFoundError, match="absentmnist.npz"):
        MedMNISTDataModule("absentmnist", str(tmp_path))
    np.savez(tmp_path / "partial.npz", train_images=np.zeros((2, 28, 28), np.uint8), train_labels=np.zeros(2))
    with pytest.raises(ValueError, match="partial.npz: missing keys.*val_images"):
        MedMNISTDataModule("partial", str(tmp_path))
    arrays = {f"{s}_images": np.zeros((2, 28, 28), np.uint8) for s in COUNTS}
    arrays |= {f"{s}_labels": np.zeros((2, 14), np.uint8) for s in COUNTS}
    np.savez(tmp_path / "chest.npz", **arrays)
    with pytest.raises(ValueError, match="chest.npz: train_labels has shape"):
        MedMNISTDataModule("chest", str(tmp_path))


def test_test_samples_keeps_a_seeded_random_subset_of_the_test_split(tmp_path):
    write_medmnist(tmp_path / "toy.npz", COUNTS, num_classes=3, rgb=False, column=False)

    def test_ids(seed: int, samples: int | None) -> list[str]:
        dm = MedMNISTDataModule("toy", str(tmp_path), seed=seed, test_samples=samples, augment=False)
        dm.setup()
        return [sample["id"] for sample in dm.datasets["test"]]

    every = test_ids(0, None)
    subsets = {seed: test_ids(seed, 4) for seed in range(4)}
    assert all(len(set(ids)) == 4 and set(ids) <= set(every) for ids in subsets.values())
    assert test_ids(0, 4) == subsets[0] and len({tuple(ids) for ids in subsets.values()}) > 1
    assert sorted(test_ids(0, 6)) == sorted(every) and test_ids(0, 6) != every  # all of them, shuffled
    with pytest.raises(ValueError, match="test_samples=7.*6 test images"):
        test_ids(0, 7)
    with pytest.raises(ValueError, match="test_samples must be positive"):
        test_ids(0, 0)
