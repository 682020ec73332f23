"""Detection boxes from segmentation masks: one box per connected component, the component's pixel extent."""

from __future__ import annotations

import cv2
import numpy as np


def check_min_area(min_area: float) -> None:
    """Raise ValueError naming ``min_area`` unless it is a fraction of the image in [0, 1)."""
    if not 0.0 <= min_area < 1.0:
        raise ValueError(f"min_area must be in [0, 1), got {min_area}")


def component_boxes(mask: np.ndarray, min_area: float) -> tuple[np.ndarray, np.ndarray]:
    """The xyxy pixel boxes (N, 4) float32 of the 8-connected components of ``mask`` (non-zero is foreground)
    covering at least ``min_area`` of the image, and their centroids (N, 2) as (x, y). A box spans the
    component's pixels: x0, y0 its first column and row, x1, y1 one past its last (OpenCV's stats)."""
    count, _, stats, centroids = cv2.connectedComponentsWithStats((mask > 0).astype(np.uint8), connectivity=8)
    height, width = mask.shape[:2]
    kept = [c for c in range(1, count) if stats[c, cv2.CC_STAT_AREA] >= min_area * height * width]  # 0: background
    columns = (cv2.CC_STAT_LEFT, cv2.CC_STAT_TOP, cv2.CC_STAT_WIDTH, cv2.CC_STAT_HEIGHT)
    x, y, w, h = (stats[kept, column] for column in columns)
    return np.stack([x, y, x + w, y + h], axis=1).astype(np.float32), centroids[kept]
