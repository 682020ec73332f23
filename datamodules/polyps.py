"""Polyps as detection boxes: the connected components of Kvasir-SEG polyp masks (Jha et al., 2020)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from datamodules.base import MedicalDataModule
from datamodules.lung import FilePair, pair_folders
from datamodules.mask_boxes import check_min_area, component_boxes
from datamodules.pipeline import Boxes, Example
from datamodules.splits import random_split

POLYP_CLASSES = ["polyp"]


def polyp_boxes(mask: np.ndarray, min_area: float) -> Boxes:
    """One xyxy pixel box per 8-connected component of ``mask`` covering at least ``min_area`` of the image
    (``component_boxes``), each labelled 1 (polyp)."""
    boxes, _ = component_boxes(mask, min_area)
    return Boxes(boxes, np.ones(len(boxes), dtype=np.int64))


class PolypDetectionDataModule(MedicalDataModule):
    """Kvasir-SEG polyps as boxes (label 1 = ``class_names[0]``): ``root/images`` and ``root/masks`` paired by
    file name (masks binarised at > 127, orphans skipped with a warning), split by ``seed``; each mask's
    components (``polyp_boxes``) under ``min_area`` of the image (JPEG specks) dropped. Images are resized to
    ``size`` x ``size`` and their boxes scaled with them."""

    task = "detection"
    num_classes = len(POLYP_CLASSES)
    class_names = POLYP_CLASSES

    def __init__(
        self,
        root: str,
        min_area: float = 0.001,
        size: int = 256,
        channels: int = 3,
        batch_size: int = 4,
        **options: Any,
    ) -> None:
        super().__init__(size, channels, batch_size=batch_size, **options)
        check_min_area(min_area)
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"root not found: {self.root}")
        self.min_area = min_area

    def build_splits(self) -> dict[str, list[FilePair]]:
        pairs = pair_folders(self.root / "images", self.root / "masks")
        indices = random_split(len(pairs), self.val_fraction, self.test_fraction, self.seed)
        return {split: [pairs[i] for i in chosen] for split, chosen in indices.items()}

    def load_example(self, record: FilePair) -> Example:
        example = record.load()
        return replace(example, target=polyp_boxes(example.target, self.min_area))
