"""The 95th-percentile Hausdorff distance (HD95) of binary masks, as MONAI computes it
(``compute_hausdorff_distance(percentile=95)``): the edge pixels of a mask are those its binary erosion
(cross-shaped element, outside the image counted as background) removes; each edge pixel's Euclidean
distance to the other mask's nearest edge pixel (``scipy.ndimage.distance_transform_edt``); HD95 is the
larger of the two directed 95th percentiles (linear interpolation, ``numpy.percentile``), in pixels.

Empty masks, where MONAI returns NaN or inf: both empty -> 0 (they agree); one empty -> the image diagonal,
the largest distance the image allows, so an attack that erases or invents a whole structure scores the worst
HD95 instead of dropping out of the mean.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from scipy.ndimage import binary_erosion, distance_transform_edt
from torch import Tensor

PERCENTILE = 95.0


def edges(mask: np.ndarray) -> np.ndarray:
    """The edge pixels of a boolean mask: in it, but not in its erosion."""
    return mask & ~binary_erosion(mask, border_value=0)


def directed_percentile(source: np.ndarray, reference: np.ndarray, percentile: float = PERCENTILE) -> float:
    """The ``percentile`` of the distances from each edge pixel of ``source`` to the nearest of ``reference``."""
    distances = distance_transform_edt(~edges(reference))[edges(source)]
    return float(np.percentile(distances, percentile))


def hausdorff95(predicted: np.ndarray, truth: np.ndarray) -> float:
    """HD95 of two boolean masks (H, W) in pixels (see the module docstring for empty masks)."""
    if not predicted.any() and not truth.any():
        return 0.0
    if not predicted.any() or not truth.any():
        return math.hypot(*truth.shape)
    return max(directed_percentile(predicted, truth), directed_percentile(truth, predicted))


def image_hausdorff95(predicted: Tensor, truth: Tensor) -> Tensor:
    """(B,) float64 HD95 of each image's boolean masks (B, H, W), on the masks' device."""
    if predicted.shape != truth.shape or predicted.dim() != 3:
        raise ValueError(f"predicted and truth must be equal (B, H, W) masks, got {predicted.shape}, {truth.shape}")
    pairs = zip(predicted.bool().cpu().numpy(), truth.bool().cpu().numpy(), strict=True)
    return torch.tensor([hausdorff95(p, t) for p, t in pairs], dtype=torch.float64, device=predicted.device)
