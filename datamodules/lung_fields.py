"""Lung fields as detection boxes: the connected components of lung masks (chest X-ray or CT folders, NIfTI)."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np

from datamodules.lung import LungSegmentationDataModule
from datamodules.mask_boxes import check_min_area, component_boxes
from datamodules.pipeline import Boxes, Example

LUNG_FIELDS = ["right lung", "left lung"]  # the patient's sides: the right lung lies on the image's left (PA view)


def lung_field_boxes(mask: np.ndarray, min_area: float) -> Boxes:
    """One xyxy pixel box per 8-connected component of ``mask`` covering at least ``min_area`` of the image
    (``component_boxes``), labelled 1 (right lung) when its centroid lies in the image's left half, else 2."""
    boxes, centroids = component_boxes(mask, min_area)
    labels = np.where(centroids[:, 0] < mask.shape[1] / 2, 1, 2).astype(np.int64)
    return Boxes(boxes, labels)


class LungFieldDetectionDataModule(LungSegmentationDataModule):
    """The images of ``LungSegmentationDataModule`` (same layouts and splits) with their lung fields as boxes
    (``lung_field_boxes``): labels 1..2 = ``class_names``. Components under ``min_area`` of the image (JPEG
    specks in the masks) are dropped. Horizontal flips would swap the sides, so ``flip_p`` defaults to 0."""

    task = "detection"
    num_classes = len(LUNG_FIELDS)
    class_names = LUNG_FIELDS

    def __init__(
        self, root: str, min_area: float = 0.01, channels: int = 3, flip_p: float = 0.0, **options: Any
    ) -> None:
        super().__init__(root, channels=channels, flip_p=flip_p, **options)
        check_min_area(min_area)
        self.min_area = min_area

    def load_example(self, record: Any) -> Example:
        example = super().load_example(record)
        return replace(example, target=lung_field_boxes(example.target, self.min_area))
