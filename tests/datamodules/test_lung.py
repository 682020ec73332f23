"""LungSegmentationDataModule: image/mask folders and NIfTI volumes written here."""

import numpy as np
import pytest
import torch

from datamodules import LungSegmentationDataModule
from tests.datamodules.files import half_bright, write_image, write_volume


def write_pairs(folder, names, suffix=".png"):
    for index, name in enumerate(names):
        image, mask = half_bright(24, left=index % 2 == 0)
        write_image(folder / "images" / f"{name}.jpg", np.repeat(image[..., None], 3, axis=2))
        write_image(folder / "masks" / f"{name}{suffix}", mask)


def test_split_folders_pair_images_with_jpeg_masks(tmp_path):
    for split, count in (("train", 4), ("valid", 2), ("test", 2)):
        write_pairs(tmp_path / split, [f"{split}{i}" for i in range(count)], suffix=".jpg")
    dm = LungSegmentationDataModule(str(tmp_path), size=24, batch_size=8, augment=False)
    dm.setup()
    assert {split: len(ds) for split, ds in dm.datasets.items()} == {"train": 4, "val": 2, "test": 2}
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (4, 1, 24, 24) and batch["target"].shape == (4, 24, 24)
    assert batch["target"].dtype == torch.int64 and set(batch["target"].unique().tolist()) == {0, 1}
    assert torch.equal(batch["target"].bool(), batch["image"][:, 0] > 0.5)  # JPEG masks binarised at > 127


def test_flat_folders_split_by_seed_and_orphans_are_skipped_with_a_warning(tmp_path):
    write_pairs(tmp_path, [f"s{i:02d}" for i in range(10)])
    write_image(tmp_path / "masks" / "orphan.png", np.zeros((24, 24), np.uint8))
    with pytest.warns(UserWarning, match="orphan"):
        dm = LungSegmentationDataModule(str(tmp_path), size=24, val_fraction=0.2, test_fraction=0.2)
        dm.setup()
    names = {split: sorted(pair.image.stem for pair in ds.records) for split, ds in dm.datasets.items()}
    assert [len(names[s]) for s in ("train", "val", "test")] == [6, 2, 2]
    assert sorted(sum(names.values(), [])) == [f"s{i:02d}" for i in range(10)]


def test_mask_of_another_size_names_both_files(tmp_path):
    write_pairs(tmp_path, ["a", "b"])
    write_image(tmp_path / "masks" / "b.png", np.zeros((20, 24), np.uint8))
    with pytest.raises(ValueError, match=r"masks/b\.png.*images/b\.jpg"):
        LungSegmentationDataModule(str(tmp_path)).setup()


def chest_volume(depth=6):
    """HU volume (x, y, z) in RAS axes: a lung blob on slices 1..4, a bone marker at the anterior edge."""
    hu = np.full((16, 12, depth), 40.0, dtype=np.float32)
    mask = np.zeros(hu.shape, dtype=np.uint8)
    hu[2:7, 3:9, 1:5] = -1000.0
    mask[2:7, 3:9, 1:5] = 2  # label 2 (one lung) still counts as lung
    hu[:, -1, :] = 400.0  # largest y = anterior
    return hu, mask


def write_ct_set(root, count=5):
    for index in range(count):
        hu, mask = chest_volume()
        write_volume(root / "ct_scans" / f"case{index}.nii.gz", hu)
        write_volume(root / "lung_mask" / f"case{index}.nii.gz", mask)


def test_nifti_slices_are_windowed_oriented_and_split_by_volume(tmp_path):
    write_ct_set(tmp_path)
    dm = LungSegmentationDataModule(
        str(tmp_path), layout="nifti", size=16, augment=False, val_fraction=0.2, test_fraction=0.2
    )
    dm.setup()
    volumes = {split: {r.volume.name for r in ds.records} for split, ds in dm.datasets.items()}
    assert [len(volumes[s]) for s in ("train", "val", "test")] == [3, 1, 1]
    assert not (volumes["train"] & volumes["val"]) and not (volumes["train"] & volumes["test"])
    assert sorted(r.index for r in dm.datasets["val"].records) == [1, 2, 3, 4]  # empty slices skipped
    example = dm.datasets["val"].load(dm.datasets["val"].records[0])
    image, mask = example.image[..., 0], example.target
    assert image.shape == (12, 16)  # rows follow y (anterior-posterior), columns x
    np.testing.assert_allclose(image[0], 1.0)  # the anterior marker (400 HU) is the top row, window top
    assert np.isclose(image[mask == 1], 0.0).all() and np.isclose(image[1:][mask[1:] == 0], 1040 / 1400).all()
    assert mask.sum() == 5 * 6


def test_nifti_stride_keeps_empty_slices_when_asked(tmp_path):
    write_ct_set(tmp_path, count=1)
    dm = LungSegmentationDataModule(
        str(tmp_path), layout="nifti", skip_empty=False, slice_stride=2, val_fraction=0.0, test_fraction=0.0
    )
    dm.setup()
    assert [r.index for r in dm.datasets["train"].records] == [0, 2, 4]


def test_nifti_pairs_by_metadata_and_checks_shapes(tmp_path):
    hu, mask = chest_volume()
    write_volume(tmp_path / "ct_scans" / "coronacases_org_001.nii", hu)
    write_volume(tmp_path / "lung_mask" / "coronacases_001.nii", mask)
    (tmp_path / "metadata.csv").write_text(
        "ct_scan,lung_mask\n../input/ct_scans/coronacases_org_001.nii,../input/lung_mask/coronacases_001.nii\n"
    )
    dm = LungSegmentationDataModule(str(tmp_path), layout="nifti", val_fraction=0.0, test_fraction=0.0)
    dm.setup()
    assert len(dm.datasets["train"]) == 4
    write_volume(tmp_path / "lung_mask" / "coronacases_001.nii", mask[:, :, :5])
    with pytest.raises(ValueError, match=r"coronacases_001\.nii.*coronacases_org_001\.nii"):
        LungSegmentationDataModule(str(tmp_path), layout="nifti").setup()


def test_bad_arguments_name_themselves(tmp_path):
    with pytest.raises(ValueError, match="layout"):
        LungSegmentationDataModule(str(tmp_path), layout="dicom")
    with pytest.raises(ValueError, match="window_high"):
        LungSegmentationDataModule(str(tmp_path), window_low=100.0, window_high=-100.0)
    with pytest.raises(FileNotFoundError, match="nowhere"):
        LungSegmentationDataModule(str(tmp_path / "nowhere"))
