"""EndoscopyArtefactDataModule: YOLO, VOC and COCO annotations written here, and their errors."""

import pytest
import torch

from datamodules import EndoscopyArtefactDataModule
from tests.datamodules.files import write_detection_set

BOXES = [(0, 8.0, 4.0, 24.0, 20.0), (6, 40.0, 10.0, 80.0, 40.0)]


@pytest.mark.parametrize("fmt", ["yolo", "voc", "coco"])
def test_every_format_gives_the_same_scaled_targets(tmp_path, fmt):
    write_detection_set(tmp_path, fmt, BOXES)
    dm = EndoscopyArtefactDataModule(
        str(tmp_path), format=fmt, size=40, val_fraction=0.0, test_fraction=0.0, augment=False
    )
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (1, 3, 40, 40) and batch["id"] == ["frame"]
    target = batch["target"][0]
    # the 80 x 40 frame is resized to 40 x 40: x halves, y stays
    torch.testing.assert_close(
        target["boxes"], torch.tensor([[4.0, 4.0, 12.0, 20.0], [20.0, 10.0, 40.0, 40.0]])
    )
    assert target["labels"].tolist() == [1, 7] and target["labels"].dtype == torch.int64
    assert dm.num_classes == 7 and dm.class_names[6] == "instrument"


def test_frames_without_annotations_have_empty_targets(tmp_path):
    write_detection_set(tmp_path, "yolo", [])
    dm = EndoscopyArtefactDataModule(
        str(tmp_path), val_fraction=0.0, test_fraction=0.0, size=32, augment=False
    )
    target = next(iter(dm.train_dataloader()))["target"][0]
    assert target["boxes"].shape == (0, 4) and target["labels"].shape == (0,)


@pytest.mark.parametrize(
    ("fmt", "boxes", "message"),
    [
        (
            "yolo",
            [(0, 8.0, 4.0, 24.0, 20.0), (1, 60.0, 10.0, 90.0, 30.0)],
            r"frame\.txt, line 2: box .* outside",
        ),
        ("yolo", [(7, 8.0, 4.0, 24.0, 20.0)], r"frame\.txt, line 1: class '7'"),
        ("voc", [(2, -5.0, 4.0, 24.0, 20.0)], r"frame\.xml, object 1: box .* outside"),
        ("coco", [(3, 8.0, 4.0, 24.0, 45.0)], r"annotations\.json, annotation 0: box .* outside"),
    ],
)
def test_bad_boxes_and_classes_name_the_file_and_line(tmp_path, fmt, boxes, message):
    write_detection_set(tmp_path, fmt, boxes)
    with pytest.raises(ValueError, match=message):
        EndoscopyArtefactDataModule(str(tmp_path), format=fmt).setup()


def test_unknown_class_names_and_formats_are_refused(tmp_path):
    write_detection_set(tmp_path, "voc", BOXES)
    xml = tmp_path / "frame.xml"
    xml.write_text(xml.read_text().replace("specularity", "polyp"))
    with pytest.raises(ValueError, match=r"frame\.xml, object 1: class 'polyp'"):
        EndoscopyArtefactDataModule(str(tmp_path), format="voc").setup()
    with pytest.raises(ValueError, match="format"):
        EndoscopyArtefactDataModule(str(tmp_path), format="kitti")
