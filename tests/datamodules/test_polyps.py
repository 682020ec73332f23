"""Polyps as boxes: the extents of the connected components of Kvasir-SEG masks, on constructed and real files."""

import re
from pathlib import Path

import numpy as np
import pytest
import torch

from benchmarks.grid import CONFIG_DIR, ModelSpec
from benchmarks.validation import ModelCheck
from datamodules import PolypDetectionDataModule
from datamodules.io import read_mask
from datamodules.polyps import polyp_boxes
from tests.datamodules.files import write_image
from tests.realdata import require_shared

CONFIG = CONFIG_DIR / "train" / "kvasir_polyps.yaml"


def extent(mask: np.ndarray) -> list[int]:
    """xyxy of the pixels of ``mask``: first column and row, one past the last."""
    rows, columns = np.nonzero(mask)
    return [columns.min(), rows.min(), columns.max() + 1, rows.max() + 1]


def polyp_masks(height: int = 30, width: int = 40) -> tuple[np.ndarray, list[np.ndarray]]:
    """A 0/255 mask of two polyps (one an L with a diagonal pixel, which 8-connectivity joins to it) and a
    one-pixel JPEG speck, with each polyp's own mask."""
    first = np.zeros((height, width), dtype=bool)
    first[3:12, 4:9] = True
    first[9:12, 9:20] = True
    first[12, 20] = True  # touches the L at a corner only
    second = np.zeros_like(first)
    second[18:27, 25:37] = True
    mask = (first | second).astype(np.uint8) * 255
    mask[0, width - 1] = 255
    return mask, [first, second]


def test_each_polyp_becomes_the_box_of_its_extent_and_specks_are_dropped():
    mask, polyps = polyp_masks()
    found = polyp_boxes(mask, min_area=0.005)
    order = np.argsort(found.boxes[:, 0])
    np.testing.assert_array_equal(found.boxes[order], [extent(polyp) for polyp in polyps])
    assert found.boxes.dtype == np.float32 and found.labels.tolist() == [1, 1]
    assert len(polyp_boxes(mask, min_area=0.0).labels) == 3  # the speck counts at min_area 0
    empty = polyp_boxes(np.zeros((8, 8), np.uint8), 0.001)
    assert empty.boxes.shape == (0, 4) and empty.labels.shape == (0,)


def write_polyp_set(root: Path, count: int = 5) -> Path:
    """``count`` 40 x 30 (w x h) frames with the masks of ``polyp_masks`` under ``images/`` and ``masks/``."""
    mask, _ = polyp_masks()
    for index in range(count):
        write_image(root / "images" / f"frame{index}.jpg", np.full((30, 40, 3), 60 + 30 * index, np.uint8))
        write_image(root / "masks" / f"frame{index}.png", mask)
    return root


def test_boxes_are_scaled_to_the_resized_image_and_the_split_follows_the_seed(tmp_path):
    root = write_polyp_set(tmp_path)
    dm = PolypDetectionDataModule(str(root), min_area=0.005, size=16, val_fraction=0.2, test_fraction=0.2,
                                  augment=False)
    target = next(iter(dm.test_dataloader()))["target"][0]
    _, polyps = polyp_masks()
    scale = torch.tensor([16 / 40, 16 / 30] * 2)
    expected = torch.tensor([extent(polyp) for polyp in polyps], dtype=torch.float32) * scale
    torch.testing.assert_close(target["boxes"][target["boxes"][:, 0].argsort()], expected)
    assert (dm.task, dm.num_classes, dm.class_names) == ("detection", 1, ["polyp"])
    assert {split: len(dm.datasets[split]) for split in ("train", "val", "test")} == {"train": 3, "val": 1, "test": 1}
    split_ids = [[record.image.stem for record in dm.datasets[split].records] for split in ("train", "val", "test")]
    again = PolypDetectionDataModule(str(root), seed=0, val_fraction=0.2, test_fraction=0.2)
    again.setup()
    assert [[r.image.stem for r in again.datasets[s].records] for s in ("train", "val", "test")] == split_ids


def test_missing_unpaired_and_damaged_files_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match=re.escape(f"root not found: {tmp_path / 'none'}")):
        PolypDetectionDataModule(str(tmp_path / "none"))
    with pytest.raises(ValueError, match="min_area must be in"):
        PolypDetectionDataModule(str(tmp_path), min_area=-0.1)
    (tmp_path / "images").mkdir()
    with pytest.raises(FileNotFoundError, match=re.escape(f"folder not found: {tmp_path / 'masks'}")):
        PolypDetectionDataModule(str(tmp_path)).setup()
    root = write_polyp_set(tmp_path, count=3)
    write_image(root / "images" / "lonely.jpg", np.zeros((30, 40, 3), np.uint8))
    with pytest.warns(UserWarning, match=r"skipping 1 images .* without a partner: \['lonely'\]"):
        dm = PolypDetectionDataModule(str(root), val_fraction=0.0, test_fraction=0.0)
        dm.setup()
    assert len(dm.datasets["train"]) == 3
    (root / "images" / "lonely.jpg").unlink()
    (root / "masks" / "frame1.png").write_bytes(b"not an image")
    with pytest.raises(ValueError, match=re.escape(f"cannot decode image file {root / 'masks' / 'frame1.png'}")):
        PolypDetectionDataModule(str(root)).setup()
    write_image(root / "masks" / "frame1.png", np.zeros((30, 41), np.uint8))
    with pytest.raises(ValueError, match=re.escape(f"mask {root / 'masks' / 'frame1.png'} is (41, 30)")):
        PolypDetectionDataModule(str(root)).setup()


def test_train_config_validates_as_the_benchmark_checks_it(tmp_path):
    root = write_polyp_set(tmp_path)
    spec = ModelSpec("polyps", "detector", CONFIG, (f"--data.init_args.root={root}",), seed=0)
    assert ModelCheck(spec, tmp_path / "bench.yaml").problems() == []
    wrong_classes = ModelSpec("polyps", "detector", CONFIG, (f"--data.init_args.root={root}",
                                                             "--model.init_args.num_classes=2"), seed=0)
    (problem,) = ModelCheck(wrong_classes, tmp_path / "bench.yaml").problems()
    assert problem.key == "model.init_args.num_classes"


@pytest.mark.realdata
def test_kvasir_polyps_end_to_end():
    root = require_shared("kvasir_seg_mini")
    dm = PolypDetectionDataModule(str(root), size=64, batch_size=8, val_fraction=0.0, test_fraction=0.0,
                                  augment=False)
    batch = next(iter(dm.fit_dataloader()))
    assert batch["image"].shape == (5, 3, 64, 64)
    counts = {name: len(target["labels"]) for name, target in zip(batch["id"], batch["target"], strict=True)}
    assert sorted(counts.values()) == [1, 1, 1, 1, 2]  # one frame shows two polyps; its JPEG speck is dropped
    for name, target in zip(batch["id"], batch["target"], strict=True):
        assert (target["labels"] == 1).all()
        if counts[name] == 1:  # a single polyp: its box is the extent of the whole mask
            mask = read_mask(root / "masks" / f"{name}.jpg")
            scale = torch.tensor([64 / mask.shape[1], 64 / mask.shape[0]] * 2)
            expected = torch.tensor([extent(mask)], dtype=torch.float32) * scale
            torch.testing.assert_close(target["boxes"], expected)
