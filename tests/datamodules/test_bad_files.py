"""Damaged data files as users meet them (truncated downloads, garbage, NaN coordinates, incomplete COCO):
each is one ValueError that names the file (and line, image or array) and what is wrong with it."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from datamodules.endoscopy import EndoscopyArtefactDataModule
from datamodules.io import read_image
from datamodules.medmnist import MedMNISTDataModule
from datamodules.nifti import AxialVolume
from tests.datamodules.files import write_detection_set, write_image, write_medmnist, write_volume


def truncate(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def damage(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[200:260] = bytes(60)
    path.write_bytes(bytes(data))


def relabel(path: Path) -> None:
    arrays = dict(np.load(path))
    arrays["train_labels"] = arrays["train_labels"].astype(float)
    arrays["train_labels"][0] = np.nan
    np.savez(path, **arrays)


NPZ_CASES = {
    "truncated": (truncate, "cannot read npz file {path}: File is not a zip file"),
    "empty": (lambda path: path.write_bytes(b""), "{path} is not an .npz archive: an empty file"),
    "garbage": (lambda path: path.write_bytes(b"hello" * 20), "{path} is not an .npz archive: a file starting with"),
    "damaged member": (damage, "{path}: cannot read array 'train_images': Bad CRC-32"),
    "NaN label": (relabel, "{path}: train_labels must be whole numbers, got [nan]"),
}


@pytest.mark.parametrize("case", NPZ_CASES)
def test_a_bad_medmnist_archive_is_named(tmp_path, case):
    change, message = NPZ_CASES[case]
    path = write_medmnist(tmp_path / "pathmnist.npz", {"train": 4, "val": 2, "test": 2}, 3, rgb=True, column=True)
    change(path)
    with pytest.raises(ValueError, match=re.escape(message.format(path=path))):
        MedMNISTDataModule(root=str(tmp_path), flag="pathmnist", size=28).setup()


@pytest.mark.parametrize("suffix", [".png", ".jpg"])
@pytest.mark.parametrize("change", [truncate, lambda path: path.write_bytes(b"")], ids=["truncated", "empty"])
def test_a_bad_image_is_named(tmp_path, suffix, change):
    path = write_image(tmp_path / f"frame{suffix}", np.full((40, 40, 3), 90, np.uint8))
    change(path)
    with pytest.raises(ValueError, match=f"cannot decode image file {re.escape(str(path))}"):
        read_image(path)


@pytest.mark.parametrize(("name", "read", "message"), [
    ("ct.nii", lambda volume: volume.axial_slice(3), "NIfTI file {path} is truncated: .* bytes, its header needs"),
    ("ct.nii.gz", lambda volume: volume.axial_slice(3), r"cannot read slice 3 of NIfTI file {path} \(truncated"),
    ("ct.nii.gz", lambda volume: volume.occupied_slices(), r"cannot read the volume of NIfTI file {path} \(truncated"),
])
def test_a_truncated_nifti_is_named(tmp_path, name, read, message):
    path = write_volume(tmp_path / name, np.random.default_rng(0).normal(size=(32, 32, 8)).astype(np.float32))
    truncate(path)
    with pytest.raises(ValueError, match=message.format(path=re.escape(str(path)))):
        read(AxialVolume(path))


def test_nan_voxels_are_named_with_their_slice(tmp_path):
    data = np.zeros((8, 8, 4), np.float32)
    data[:, :, 2] = np.nan
    path = write_volume(tmp_path / "ct.nii", data)
    volume = AxialVolume(path)
    assert volume.axial_slice(1).shape == (8, 8)
    with pytest.raises(ValueError, match=f"NIfTI file {re.escape(str(path))}: slice 2 has NaN or infinite voxels"):
        volume.axial_slice(2)


def yolo(line: str) -> Callable[[Path], None]:
    return lambda root: (root / "frame.txt").write_text(line + "\n")


def coco(change: Callable[[dict], None]) -> Callable[[Path], None]:
    def write(root: Path) -> None:
        path = root / "annotations.json"
        data = json.loads(path.read_text())
        change(data)
        path.write_text(json.dumps(data))

    return write


RANGE = "frame.txt, line 1: cx cy w h must be numbers in [0, 1] (fractions of the image)"
DETECTION_CASES = {
    "yolo NaN": ("yolo", yolo("0 nan 0.5 0.1 0.1"), RANGE),
    "yolo inf": ("yolo", yolo("0 0.5 0.5 inf 0.1"), RANGE),
    "yolo outside": ("yolo", yolo("0 1.7 0.5 0.1 0.1"), RANGE),
    "yolo negative": ("yolo", yolo("0 0.5 0.5 -0.1 0.1"), RANGE),
    "yolo text": ("yolo", yolo("0 abc 0.5 0.1 0.1"), RANGE),
    "voc NaN": ("voc", lambda root: (root / "frame.xml").write_text(
        (root / "frame.xml").read_text().replace("<xmin>10</xmin>", "<xmin>nan</xmin>")),
        "frame.xml, object 1: box [nan, 5.0, 30.0, 20.0] has a NaN or infinite coordinate"),
    "coco without width": ("coco", coco(lambda data: data["images"][0].pop("width")),
                           "annotations.json, image 7: no 'width'"),
    "coco without file_name": ("coco", coco(lambda data: data["images"][0].pop("file_name")),
                               "annotations.json, image 7: no 'file_name'"),
    "coco wrong width": ("coco", coco(lambda data: data["images"][0].update(width=800)),
                         "annotations.json, image 7: width x height 800 x 40 is not the size of"),
    "coco without bbox": ("coco", coco(lambda data: data["annotations"][0].pop("bbox")),
                          "annotations.json, annotation 0: needs image_id, category_id and bbox"),
    "coco short bbox": ("coco", coco(lambda data: data["annotations"][0].update(bbox=[1, 2, 3])),
                        "annotations.json, annotation 0: needs image_id, category_id and bbox"),
    "coco NaN bbox": ("coco", coco(lambda data: data["annotations"][0].update(bbox=[float("nan"), 1, 2, 3])),
                      "annotations.json, annotation 0: box [nan, 1.0, nan, 4.0] has a NaN or infinite coordinate"),
    "coco images not a list": ("coco", coco(lambda data: data.update(images=5)),
                               "annotations.json: not a COCO detection file ('int' object is not iterable)"),
}


@pytest.mark.parametrize("case", DETECTION_CASES)
def test_a_bad_detection_annotation_is_named(tmp_path, case):
    fmt, change, message = DETECTION_CASES[case]
    write_detection_set(tmp_path, fmt, [(0, 10, 5, 30, 20)])
    change(tmp_path)
    with pytest.raises(ValueError, match=re.escape(f"{tmp_path}/{message}")):
        EndoscopyArtefactDataModule(root=str(tmp_path), format=fmt, size=32, val_fraction=0.0,
                                    test_fraction=0.0).setup()
