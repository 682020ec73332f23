"""Writers of tiny data sets in every supported format, for the datamodule tests."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
from PIL import Image

from datamodules.endoscopy import EAD_CLASSES


def write_image(path: Path, array: np.ndarray) -> Path:
    """Save a uint8 (H, W) or (H, W, 3) array; the suffix picks PNG or JPEG."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, quality=95)
    return path


def half_bright(size: int, left: bool) -> tuple[np.ndarray, np.ndarray]:
    """A grey image whose left (or right) half is bright, and the mask (0/255) of that half."""
    mask = np.zeros((size, size), dtype=np.uint8)
    if left:
        mask[:, : size // 2] = 255
    else:
        mask[:, size // 2 :] = 255
    return np.where(mask > 0, 220, 30).astype(np.uint8), mask


def write_medmnist(path: Path, counts: dict[str, int], num_classes: int, rgb: bool, column: bool) -> Path:
    """A MedMNIST-style npz; labels are (N, 1) if ``column`` else (N,); images grey or RGB 28 x 28."""
    rng = np.random.default_rng(0)
    arrays = {}
    for split, count in counts.items():
        shape = (count, 28, 28, 3) if rgb else (count, 28, 28)
        arrays[f"{split}_images"] = rng.integers(0, 256, size=shape, dtype=np.uint8)
        labels = np.arange(count) % num_classes
        arrays[f"{split}_labels"] = (labels[:, None] if column else labels).astype(np.uint8)
    np.savez(path, **arrays)
    return path


def write_fundus(root: Path, layout: str, grades: list[int]) -> Path:
    """An APTOS (``id_code,diagnosis`` + PNG) or EyePACS (``image,level`` + JPEG) set under ``root``."""
    header, suffix = {"aptos": ("id_code,diagnosis", ".png"), "eyepacs": ("image,level", ".jpeg")}[layout]
    rows = [header]
    for index, grade in enumerate(grades):
        name = f"eye{index:03d}"
        colour = np.full((20, 30, 3), (40 * grade, 100, 50), dtype=np.uint8)
        write_image(root / "train_images" / f"{name}{suffix}", colour)
        rows.append(f"{name},{grade}")
    (root / "train.csv").write_text("\n".join(rows) + "\n")
    return root


def write_volume(path: Path, data: np.ndarray, affine: np.ndarray | None = None) -> Path:
    """A NIfTI file of ``data`` (default affine: identity, i.e. RAS axes)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data, np.eye(4) if affine is None else affine), path)
    return path


def write_detection_set(root: Path, fmt: str, boxes: list[tuple[int, float, float, float, float]]) -> Path:
    """An 80 x 40 (w x h) ``frame.jpg`` with ``boxes`` (class 0..6, x0, y0, x1, y1 pixels) in ``fmt``."""
    width, height = 80, 40
    write_image(root / "frame.jpg", np.full((height, width, 3), 128, dtype=np.uint8))
    if fmt == "yolo":
        lines = [
            f"{c} {(x0 + x1) / 2 / width} {(y0 + y1) / 2 / height} {(x1 - x0) / width} {(y1 - y0) / height}"
            for c, x0, y0, x1, y1 in boxes
        ]
        (root / "frame.txt").write_text("\n".join(lines) + "\n")
    elif fmt == "voc":
        objects = "".join(
            f"<object><name>{EAD_CLASSES[c]}</name><bndbox><xmin>{x0}</xmin><ymin>{y0}</ymin>"
            f"<xmax>{x1}</xmax><ymax>{y1}</ymax></bndbox></object>"
            for c, x0, y0, x1, y1 in boxes
        )
        (root / "frame.xml").write_text(
            f"<annotation><filename>frame.jpg</filename><size><width>{width}</width>"
            f"<height>{height}</height></size>{objects}</annotation>"
        )
    else:
        coco = {
            "images": [{"id": 7, "file_name": "frame.jpg", "width": width, "height": height}],
            "categories": [{"id": 10 + k, "name": name} for k, name in enumerate(EAD_CLASSES)],
            "annotations": [
                {"id": i, "image_id": 7, "category_id": 10 + c, "bbox": [x0, y0, x1 - x0, y1 - y0]}
                for i, (c, x0, y0, x1, y1) in enumerate(boxes)
            ],
        }
        (root / "annotations.json").write_text(json.dumps(coco))
    return root
