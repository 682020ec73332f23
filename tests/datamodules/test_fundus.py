"""FundusDRDataModule on APTOS and EyePACS layouts written here, with every input error."""

import numpy as np
import pytest

from datamodules import FundusDRDataModule
from tests.datamodules.files import write_fundus, write_image

GRADES = [0, 1, 2, 3, 4] * 8


@pytest.mark.parametrize("layout", ["aptos", "eyepacs"])
def test_layout_is_detected_and_grades_follow_their_images(tmp_path, layout):
    write_fundus(tmp_path, layout, GRADES)
    dm = FundusDRDataModule(str(tmp_path), size=16, augment=False, val_fraction=0.2, test_fraction=0.2)
    dm.setup()
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape[1:] == (3, 16, 16)
    red = batch["image"][:, 0].mean(dim=(1, 2))
    # the writer paints each image's red channel 40 * grade: labels must not drift from their files
    np.testing.assert_allclose(red.numpy(), batch["target"].numpy() * 40 / 255, atol=2 / 255)


def test_split_is_stratified_disjoint_and_fixed_by_seed(tmp_path):
    write_fundus(tmp_path, "aptos", GRADES)

    def ids(seed):
        dm = FundusDRDataModule(str(tmp_path), size=8, seed=seed, val_fraction=0.25, test_fraction=0.25)
        dm.setup()
        return {split: [path.stem for path, _ in ds.records] for split, ds in dm.datasets.items()}, dm

    first, dm = ids(0)
    assert first == ids(0)[0] and first != ids(1)[0]
    assert sum(map(len, first.values())) == len(set().union(*map(set, first.values()))) == len(GRADES)
    for split in ("val", "test"):
        assert sorted(grade for _, grade in dm.datasets[split].records) == sorted([0, 1, 2, 3, 4] * 2)


def test_csv_without_expected_columns_names_file_and_columns(tmp_path):
    write_fundus(tmp_path, "aptos", GRADES)
    (tmp_path / "train.csv").write_text("name,grade\neye000,1\n")
    with pytest.raises(ValueError, match=r"train\.csv.*found \['name', 'grade'\]"):
        FundusDRDataModule(str(tmp_path)).setup()


@pytest.mark.parametrize("grade", ["5", "-1", "two"])
def test_grade_outside_range_names_file_and_line(tmp_path, grade):
    write_fundus(tmp_path, "eyepacs", GRADES)
    rows = (tmp_path / "train.csv").read_text().splitlines()
    rows[3] = f"eye002,{grade}"
    (tmp_path / "train.csv").write_text("\n".join(rows))
    with pytest.raises(ValueError, match=r"train\.csv, line 4"):
        FundusDRDataModule(str(tmp_path)).setup()


def test_missing_and_corrupt_images_are_errors_naming_the_file(tmp_path):
    write_fundus(tmp_path, "aptos", GRADES)
    (tmp_path / "train_images" / "eye007.png").unlink()
    with pytest.raises(FileNotFoundError, match="eye007.png"):
        FundusDRDataModule(str(tmp_path)).setup()
    write_image(tmp_path / "train_images" / "eye007.png", np.zeros((4, 4, 3), np.uint8))
    (tmp_path / "train_images" / "eye011.png").write_bytes(b"not a png")
    dm = FundusDRDataModule(str(tmp_path), size=8, val_fraction=0.0, test_fraction=0.0)
    dm.setup()
    with pytest.raises(ValueError, match="eye011.png"):
        list(dm.train_dataloader())
