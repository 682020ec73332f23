"""Endoscopic artefact detection (EAD2019 classes) from YOLO text, Pascal VOC XML or COCO JSON boxes."""

from __future__ import annotations

import json
import math
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from datamodules.base import MedicalDataModule
from datamodules.io import IMAGE_SUFFIXES, find_images, image_size, read_image
from datamodules.pipeline import Boxes, Example
from datamodules.splits import random_split

EAD_CLASSES = ["specularity", "saturation", "artifact", "blur", "contrast", "bubbles", "instrument"]
BOX_TOLERANCE = 0.5  # pixels an annotation may stick out of the image (rounding) before it is an error


@dataclass(frozen=True)
class AnnotatedImage:
    """An image file with its boxes (N, 4) xyxy in the file's pixels and labels (N,) in 1..7."""

    image: Path
    boxes: np.ndarray
    labels: np.ndarray


def checked_box(box: list[float], width: int, height: int, where: str) -> list[float]:
    """``box`` (xyxy pixels) clipped to the image; raises naming ``where`` if non-finite, outside or degenerate."""
    if not all(math.isfinite(value) for value in box):
        raise ValueError(f"{where}: box {box} has a NaN or infinite coordinate")
    x0, y0, x1, y1 = box
    if (
        x0 < -BOX_TOLERANCE
        or y0 < -BOX_TOLERANCE
        or x1 > width + BOX_TOLERANCE
        or y1 > height + BOX_TOLERANCE
    ):
        raise ValueError(f"{where}: box {box} lies outside the {width}x{height} image")
    clipped = [max(x0, 0.0), max(y0, 0.0), min(x1, float(width)), min(y1, float(height))]
    if clipped[2] <= clipped[0] or clipped[3] <= clipped[1]:
        raise ValueError(f"{where}: box {box} has no area")
    return clipped


def class_label(name: str, where: str) -> int:
    """The detection label (1..7) of an EAD2019 class name, case-insensitive."""
    key = name.strip().lower()
    if key not in EAD_CLASSES:
        raise ValueError(f"{where}: class {name!r} is not one of {EAD_CLASSES}")
    return EAD_CLASSES.index(key) + 1


def _annotated(image: Path, boxes: list[list[float]], labels: list[int]) -> AnnotatedImage:
    return AnnotatedImage(
        image, np.asarray(boxes, dtype=np.float32).reshape(-1, 4), np.asarray(labels, dtype=np.int64)
    )


def read_yolo(image_dir: Path, annotation_file: str) -> list[AnnotatedImage]:
    """Per-image ``<stem>.txt`` beside each image, lines ``class cx cy w h`` normalised; no file: no boxes."""
    items = []
    for image in find_images(image_dir):
        width, height = image_size(image)
        boxes, labels = [], []
        text = image.with_suffix(".txt")
        lines = text.read_text().splitlines() if text.is_file() else []
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            where = f"{text}, line {number}"
            fields = line.split()
            if len(fields) != 5:
                raise ValueError(f"{where}: expected 'class cx cy w h', got {line!r}")
            if not fields[0].isdigit() or int(fields[0]) >= len(EAD_CLASSES):
                raise ValueError(
                    f"{where}: class {fields[0]!r} is not an integer in 0..{len(EAD_CLASSES) - 1}"
                )
            cx, cy, w, h = yolo_coordinates(fields[1:], where)
            box = [(cx - w / 2) * width, (cy - h / 2) * height, (cx + w / 2) * width, (cy + h / 2) * height]
            boxes.append(checked_box(box, width, height, where))
            labels.append(int(fields[0]) + 1)
        items.append(_annotated(image, boxes, labels))
    return items


def yolo_coordinates(fields: list[str], where: str) -> list[float]:
    """``cx cy w h`` of a YOLO line as numbers in [0, 1] (fractions of the image); ValueError naming ``where``."""
    try:
        values = [float(value) for value in fields]
    except ValueError:
        values = []
    if len(values) != 4 or not all(0.0 <= value <= 1.0 for value in values):  # NaN fails the range too
        raise ValueError(f"{where}: cx cy w h must be numbers in [0, 1] (fractions of the image), got {fields}")
    return values


def _voc_image(xml: Path, tree: ET.Element, image_dir: Path) -> Path:
    filename = tree.findtext("filename")
    if filename:
        return image_dir / filename.strip()
    for suffix in IMAGE_SUFFIXES:
        if (candidate := image_dir / f"{xml.stem}{suffix}").is_file():
            return candidate
    raise FileNotFoundError(f"{xml}: no <filename> and no image named {xml.stem}.* in {image_dir}")


def read_voc(image_dir: Path, annotation_file: str) -> list[AnnotatedImage]:
    """One Pascal VOC ``.xml`` per image: ``<object><name>`` and ``<bndbox>`` xmin/ymin/xmax/ymax."""
    items = []
    for xml in sorted(image_dir.glob("*.xml")):
        try:
            tree = ET.parse(xml).getroot()
        except ET.ParseError as error:
            raise ValueError(f"cannot parse VOC file {xml}: {error}") from error
        image = _voc_image(xml, tree, image_dir)
        width, height = image_size(image)
        boxes, labels = [], []
        for number, obj in enumerate(tree.iter("object"), start=1):
            where = f"{xml}, object {number}"
            labels.append(class_label(obj.findtext("name", ""), where))
            box = obj.find("bndbox")
            try:
                values = [float(box.findtext(tag)) for tag in ("xmin", "ymin", "xmax", "ymax")]
            except (AttributeError, TypeError, ValueError) as error:
                raise ValueError(f"{where}: incomplete <bndbox>") from error
            boxes.append(checked_box(values, width, height, where))
        items.append(_annotated(image, boxes, labels))
    return items


def read_coco(image_dir: Path, annotation_file: str) -> list[AnnotatedImage]:
    """One COCO JSON: ``images`` (id, file_name, width, height), ``annotations`` (xywh), ``categories``."""
    path = image_dir / annotation_file
    if not path.is_file():
        raise FileNotFoundError(f"COCO annotation file not found: {path}")
    try:
        data = json.loads(path.read_text())
        categories = {
            c["id"]: class_label(c["name"], f"{path}, category {c['id']}") for c in data["categories"]
        }
        images = {entry["id"]: coco_image(entry, path, image_dir) for entry in data["images"]}
        annotations = list(data["annotations"])
    except (json.JSONDecodeError, KeyError, TypeError) as error:
        problem = f"no key {error}" if isinstance(error, KeyError) else str(error)
        raise ValueError(f"{path}: not a COCO detection file ({problem})") from error
    boxes: dict[int, list[list[float]]] = {image_id: [] for image_id in images}
    labels: dict[int, list[int]] = {image_id: [] for image_id in images}
    for annotation in annotations:
        where = f"{path}, annotation {annotation.get('id') if isinstance(annotation, dict) else annotation!r}"
        try:
            entry = images.get(annotation["image_id"])
            category = annotation["category_id"]
            x, y, w, h = (float(value) for value in annotation["bbox"])
        except (KeyError, TypeError, ValueError) as error:
            raise ValueError(f"{where}: needs image_id, category_id and bbox [x, y, w, h] numbers "
                             f"({error!r})") from error
        if entry is None or category not in categories:
            raise ValueError(f"{where}: unknown image_id or category_id")
        boxes[entry["id"]].append(checked_box([x, y, x + w, y + h], entry["width"], entry["height"], where))
        labels[entry["id"]].append(categories[category])
    return [
        _annotated(image_dir / entry["file_name"], boxes[image_id], labels[image_id])
        for image_id, entry in sorted(images.items(), key=lambda item: item[1]["file_name"])
    ]


def coco_image(entry: dict[str, Any], path: Path, image_dir: Path) -> dict[str, Any]:
    """An ``images`` entry of a COCO file, checked: ``id``, ``file_name``, and ``width``/``height`` that are the
    image file's own size (boxes are in those pixels); ValueError naming ``path``, the image and the field."""
    where = f"{path}, image {entry.get('id') if isinstance(entry, dict) else entry!r}"
    missing = [key for key in ("id", "file_name", "width", "height") if key not in entry]
    if missing:
        raise ValueError(f"{where}: no {', '.join(map(repr, missing))}")
    size = image_size(image_dir / entry["file_name"])
    if (entry["width"], entry["height"]) != size:
        raise ValueError(f"{where}: width x height {entry['width']!r} x {entry['height']!r} is not the size of "
                         f"{image_dir / entry['file_name']}, {size[0]} x {size[1]}")
    return entry


READERS: dict[str, Callable[[Path, str], list[AnnotatedImage]]] = {
    "yolo": read_yolo,
    "voc": read_voc,
    "coco": read_coco,
}


class EndoscopyArtefactDataModule(MedicalDataModule):
    """EAD2019-style artefact boxes (labels 1..7 = ``class_names``) for frames in ``root/image_dir``.

    ``format``: "yolo" (``.txt`` beside each image), "voc" (``.xml`` per image) or "coco"
    (``annotation_file`` in the image folder). Boxes are scaled to the resized image.
    """

    task = "detection"
    num_classes = len(EAD_CLASSES)
    class_names = EAD_CLASSES

    def __init__(
        self,
        root: str,
        format: str = "yolo",
        image_dir: str = "",
        annotation_file: str = "annotations.json",
        size: int = 256,
        channels: int = 3,
        batch_size: int = 4,
        **options: Any,
    ) -> None:
        super().__init__(size, channels, batch_size=batch_size, **options)
        if format not in READERS:
            raise ValueError(f"format must be one of {sorted(READERS)}, got {format!r}")
        self.image_dir = Path(root) / image_dir
        if not self.image_dir.is_dir():
            raise FileNotFoundError(f"image folder not found: {self.image_dir}")
        self.format = format
        self.annotation_file = annotation_file

    def build_splits(self) -> dict[str, list[AnnotatedImage]]:
        items = READERS[self.format](self.image_dir, self.annotation_file)
        if not items:
            raise ValueError(f"no annotated images in {self.image_dir} (format={self.format!r})")
        indices = random_split(len(items), self.val_fraction, self.test_fraction, self.seed)
        return {split: [items[i] for i in chosen] for split, chosen in indices.items()}

    def load_example(self, record: AnnotatedImage) -> Example:
        return Example(read_image(record.image), Boxes(record.boxes, record.labels), record.image.stem)
