"""Laplacian pyramid (Burt and Adelson 1983) over the last two dimensions of any tensor.

Reconstruction inverts decomposition to float precision for any size, odd sizes included, because
each band stores exactly what upsampling the coarser level misses.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

BINOMIAL_TAPS = (1.0, 4.0, 6.0, 4.0, 1.0)


def blur(images: Tensor) -> Tensor:
    """Separable 5-tap binomial blur of the last two dimensions, replicate padding (any size >= 1)."""
    *leading, height, width = images.shape
    taps = torch.tensor(BINOMIAL_TAPS, dtype=images.dtype, device=images.device) / 16.0
    planes = F.pad(images.reshape(-1, 1, height, width), (2, 2, 2, 2), mode="replicate")
    planes = F.conv2d(planes, taps.view(1, 1, 1, 5))
    planes = F.conv2d(planes, taps.view(1, 1, 5, 1))
    return planes.reshape(*leading, height, width)


def downsample(images: Tensor) -> Tensor:
    """Blur then keep every second row and column: (H, W) -> (ceil(H / 2), ceil(W / 2))."""
    return blur(images)[..., ::2, ::2]


def upsample(images: Tensor, size: tuple[int, int]) -> Tensor:
    """Bilinear interpolation to ``size`` followed by the binomial blur."""
    *leading, height, width = images.shape
    planes = images.reshape(-1, 1, height, width)
    planes = F.interpolate(planes, size=size, mode="bilinear", align_corners=False)
    return blur(planes.reshape(*leading, *size))


def laplacian_pyramid(images: Tensor, levels: int) -> list[Tensor]:
    """``levels - 1`` band-pass levels (finest first), then the low-pass residual; one level is [images]."""
    pyramid = []
    current = images
    for _ in range(levels - 1):
        coarser = downsample(current)
        pyramid.append(current - upsample(coarser, current.shape[-2:]))
        current = coarser
    pyramid.append(current)
    return pyramid


def reconstruct(pyramid: list[Tensor]) -> Tensor:
    """Inverse of :func:`laplacian_pyramid`: upsample the residual and add the bands back, coarse to fine."""
    images = pyramid[-1]
    for band in reversed(pyramid[:-1]):
        images = band + upsample(images, band.shape[-2:])
    return images
