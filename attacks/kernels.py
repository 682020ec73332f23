"""Centred Gaussian smoothing of image-shaped tensors (TI's gradient smoothing, SMIA's W * eta)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from attacks.base import check_positive, check_steps


def gaussian_kernel(size: int, sigma: float) -> Tensor:
    """Centred (size, size) Gaussian kernel with standard deviation ``sigma`` pixels, summing to 1."""
    offsets = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    profile = torch.exp(-0.5 * (offsets / sigma) ** 2)
    kernel = torch.outer(profile, profile)
    return kernel / kernel.sum()


class GaussianBlur:
    """Depthwise 'same'-padded (zeros) convolution of (B, C, H, W) tensors with a centred Gaussian.

    ``size`` must be odd; ``sigma`` None means (size - 1) / 6, the +-3 sigma kernel of Dong et al. 2019.
    """

    def __init__(self, size: int, sigma: float | None = None) -> None:
        check_steps("kernel_size", size)
        if size % 2 == 0:
            raise ValueError(f"kernel_size must be an odd integer >= 1, got {size!r}")
        sigma = (size - 1) / 6 if sigma is None else sigma
        check_positive("sigma", sigma, allow_zero=size == 1)
        self.size = int(size)
        self.sigma = float(sigma)
        self.kernel = gaussian_kernel(self.size, self.sigma) if self.size > 1 else torch.ones(1, 1)

    def __call__(self, x: Tensor) -> Tensor:
        channels = x.shape[1]
        weight = self.kernel.to(device=x.device, dtype=x.dtype).expand(channels, 1, self.size, self.size)
        return F.conv2d(x, weight, padding=self.size // 2, groups=channels)
