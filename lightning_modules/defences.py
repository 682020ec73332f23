"""Input-transformation defences: a network evaluated on transformed [0, 1] images, ``network(transform(x))``.

``InputDefence`` wraps any network; ``DEFENCES`` maps config names to the transforms; ``with_defence`` puts
one in front of a task module's network (leaving the module itself untouched). Every ``InputDefence``
satisfies ``attacks.adaptive.InputTransformed``, so ``attacks.adaptive.BPDA`` can attack through it, and
``attacks.adaptive.EOT`` averages over the draws of the randomised ones.
"""

from __future__ import annotations

import copy
import inspect
import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from attacks.base import check_fraction, check_positive, check_steps
from lightning_modules.normalization import Normalize
from lightning_modules.task_module import TaskModule

GREY_LEVELS = 255
JPEG_BLOCK = 8
# ITU-T T.81 Annex K, Tables K.1 (luminance) and K.2 (chrominance): the IJG base quantisation tables
LUMINANCE_TABLE = (
    (16, 11, 10, 16, 24, 40, 51, 61),
    (12, 12, 14, 19, 26, 58, 60, 55),
    (14, 13, 16, 24, 40, 57, 69, 56),
    (14, 17, 22, 29, 51, 87, 80, 62),
    (18, 22, 37, 56, 68, 109, 103, 77),
    (24, 35, 55, 64, 81, 104, 113, 92),
    (49, 64, 78, 87, 103, 121, 120, 101),
    (72, 92, 95, 98, 112, 100, 103, 99),
)
CHROMINANCE_TABLE = (
    (17, 18, 24, 47, 99, 99, 99, 99),
    (18, 21, 26, 66, 99, 99, 99, 99),
    (24, 26, 56, 99, 99, 99, 99, 99),
    (47, 66, 99, 99, 99, 99, 99, 99),
    *((99,) * 8,) * 4,
)
# JFIF RGB -> YCbCr (offset 128 on the chroma) and its inverse
RGB_TO_YCBCR = ((0.299, 0.587, 0.114), (-0.168736, -0.331264, 0.5), (0.5, -0.418688, -0.081312))
YCBCR_TO_RGB = ((1.0, 0.0, 1.402), (1.0, -0.344136, -0.714136), (1.0, 1.772, 0.0))
CHROMA_OFFSET = (0.0, 128.0, 128.0)


class InputDefence(nn.Module):
    """``network(transform(x))`` on [0, 1] images: an input-transformation defence around any network
    (normalisation stays inside ``network``)."""

    def __init__(self, network: nn.Module, transform: nn.Module) -> None:
        super().__init__()
        self.network = network
        self.transform = transform

    def forward(self, images: Tensor) -> Any:
        return self.network(self.transform(images))


def grey_levels(images: Tensor) -> Tensor:
    """[0, 1] images as integer grey levels 0..255 (float), as an 8-bit image file holds them."""
    return (images.clamp(0, 1) * GREY_LEVELS).round()


class BitDepthReduction(nn.Module):
    """Bit-depth reduction (Xu et al., NDSS 2018, "Feature squeezing", Sec. 4.1; Guo et al., ICLR 2018):
    round(x (2^b - 1)) / (2^b - 1), 2^b evenly spaced levels per channel. Its gradient is zero."""

    def __init__(self, bits: int = 4) -> None:
        super().__init__()
        check_steps("bits", bits)
        if bits > 8:
            raise ValueError(f"bits must be an integer in 1..8, got {bits!r}")
        self.bits = int(bits)

    def forward(self, images: Tensor) -> Tensor:
        top = 2**self.bits - 1
        return (images * top).round() / top


def jpeg_tables(quality: int) -> Tensor:
    """(2, 8, 8) luminance and chrominance quantisation tables at IJG ``quality``: the Annex K tables scaled by
    5000 / q below 50 and 200 - 2 q from 50, floor((T s + 50) / 100) clipped to 1..255 (libjpeg's jcparam.c)."""
    scale = 5000 // quality if quality < 50 else 200 - 2 * quality
    base = torch.tensor((LUMINANCE_TABLE, CHROMINANCE_TABLE), dtype=torch.float64)
    return ((base * scale + 50) // 100).clamp(1, GREY_LEVELS).float()


def dct_matrix(size: int = JPEG_BLOCK) -> Tensor:
    """The orthonormal DCT-II matrix C, C[u, x] = c(u) cos((2x + 1) u pi / 2N): T.81's 8 x 8 FDCT is C X C^T."""
    u = torch.arange(size, dtype=torch.float64)[:, None]
    x = torch.arange(size, dtype=torch.float64)[None, :]
    matrix = torch.cos((2 * x + 1) * u * math.pi / (2 * size)) * math.sqrt(2 / size)
    matrix[0] /= math.sqrt(2)
    return matrix.float()


class JPEGCompression(nn.Module):
    """A baseline JPEG round trip in pure torch (Guo et al., ICLR 2018; Das et al. 2017), batched on any device:
    8-bit grey levels, JFIF YCbCr for 3 channels (other channel counts: each channel coded as luminance),
    level shift, 8 x 8 DCT (ITU-T T.81, A.3.3) of edge-replicated blocks, quantisation round(F / Q) with the
    IJG tables at ``quality``, and back. Chroma is not subsampled (4:4:4, as PIL's ``subsampling=0``). Every
    step rounds, so the input gradient is zero: the non-differentiable kind BPDA exists for."""

    def __init__(self, quality: int = 75) -> None:
        super().__init__()
        check_steps("quality", quality)
        if quality > 100:
            raise ValueError(f"quality must be an integer in 1..100, got {quality!r}")
        self.quality = int(quality)
        self.register_buffer("tables", jpeg_tables(self.quality), persistent=False)
        self.register_buffer("dct", dct_matrix(), persistent=False)
        self.register_buffer("to_ycbcr", torch.tensor(RGB_TO_YCBCR), persistent=False)
        self.register_buffer("to_rgb", torch.tensor(YCBCR_TO_RGB), persistent=False)
        self.register_buffer("offset", torch.tensor(CHROMA_OFFSET).view(1, 3, 1, 1), persistent=False)

    def forward(self, images: Tensor) -> Tensor:
        levels = grey_levels(images)
        colour = images.shape[1] == 3
        if colour:
            levels = (torch.einsum("ij,bjhw->bihw", self.to_ycbcr, levels) + self.offset).round().clamp(0, GREY_LEVELS)
        decoded = self.code_blocks(levels, self.tables[[0, 1, 1] if colour else [0] * images.shape[1]])
        if colour:
            decoded = torch.einsum("ij,bjhw->bihw", self.to_rgb, decoded - self.offset).round().clamp(0, GREY_LEVELS)
        return decoded / GREY_LEVELS

    def code_blocks(self, levels: Tensor, tables: Tensor) -> Tensor:
        """Grey levels (B, C, H, W) through DCT, quantisation with ``tables`` (C, 8, 8), dequantisation and
        inverse DCT, rounded to grey levels as a decoder outputs them."""
        batch, channels, height, width = levels.shape
        padded = F.pad(levels - 128, (0, -width % JPEG_BLOCK, 0, -height % JPEG_BLOCK), mode="replicate")
        rows, cols = padded.shape[-2] // JPEG_BLOCK, padded.shape[-1] // JPEG_BLOCK
        blocks = padded.reshape(batch, channels, rows, JPEG_BLOCK, cols, JPEG_BLOCK)
        coefficients = torch.einsum("ux,bcixjy,vy->bciujv", self.dct, blocks, self.dct)
        steps = tables[None, :, None, :, None, :]
        quantised = (coefficients / steps).round() * steps
        restored = torch.einsum("ux,bciujv,vy->bcixjy", self.dct, quantised, self.dct)
        restored = restored.reshape(batch, channels, rows * JPEG_BLOCK, cols * JPEG_BLOCK)[..., :height, :width]
        return (restored + 128).round().clamp(0, GREY_LEVELS)


class MedianSmoothing(nn.Module):
    """Median smoothing (Xu et al., NDSS 2018, "Feature squeezing", Sec. 4.2): each pixel of each channel
    becomes the median of its k x k window, the upper median for even k, with the image mirrored at its
    edges (edge pixel repeated): scipy.ndimage.median_filter(mode="reflect"), as the paper's code calls it."""

    def __init__(self, kernel_size: int = 3) -> None:
        super().__init__()
        check_steps("kernel_size", kernel_size)
        self.kernel_size = int(kernel_size)

    def forward(self, images: Tensor) -> Tensor:
        k = self.kernel_size
        before, after = k // 2, (k - 1) // 2
        padded = mirrored(mirrored(images, -1, before, after), -2, before, after)
        windows = padded.unfold(2, k, 1).unfold(3, k, 1).flatten(-2)
        return windows.kthvalue(k * k // 2 + 1, dim=-1).values


def mirrored(images: Tensor, dim: int, before: int, after: int) -> Tensor:
    """``images`` extended by ``before`` / ``after`` mirrored pixels along ``dim``, edge pixel repeated."""
    size = images.shape[dim]
    if max(before, after) > size:
        raise ValueError(f"kernel_size exceeds the image: {before + after + 1} > {size} pixels")
    start, end = images.narrow(dim, 0, before).flip(dim), images.narrow(dim, size - after, after).flip(dim)
    return torch.cat([start, images, end], dim=dim)


class RandomTransform(nn.Module):
    """A transform drawing from its own ``torch.Generator`` seeded with ``seed`` (one per device, created at
    first use there), so a defended model gives the same draws for the same sequence of calls."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        check_steps("seed", seed, minimum=0)
        self.seed = int(seed)
        self.generators: dict[str, torch.Generator] = {}

    def generator(self, device: torch.device) -> torch.Generator:
        key = str(device)
        if key not in self.generators:
            self.generators[key] = torch.Generator(device=device).manual_seed(self.seed)
        return self.generators[key]


def uniform_below(counts: Tensor, generator: torch.Generator) -> Tensor:
    """(B,) integers, the i-th uniform in 0..counts[i] - 1 (one float64 draw each)."""
    return (torch.rand(counts.shape, generator=generator, dtype=torch.float64) * counts).floor().long()


def nearest_sources(offsets: Tensor, sizes: Tensor, length: int) -> tuple[Tensor, Tensor]:
    """Where an edge of ``length`` pixels, resized to ``sizes`` (B,) and placed at ``offsets`` (B,) on a canvas of
    the same length, shows each source pixel: (B, length) source indices, as ``F.interpolate(mode="nearest")``
    picks them (floor(i * length / size) in float32, ATen's ``nearest_idx``), and whether the position is inside."""
    positions = torch.arange(length)[None] - offsets[:, None]
    inside = (positions >= 0) & (positions < sizes[:, None])
    scales = torch.tensor(float(length)) / sizes.float()
    sources = (positions.float() * scales[:, None]).floor().long().clamp(0, length - 1)
    return sources, inside


class RandomResizePad(RandomTransform):
    """Random resizing and padding (Xie et al., ICLR 2018, "Mitigating adversarial effects through
    randomization", Sec. 3), per image: resize (nearest neighbour) to a random s x s', s uniform in
    [ceil(min_scale H), H], s' = round(s W / H), then zero-pad at a uniform random offset back to H x W.
    The paper grows 299 pixels to 299..330 and pads to 331 (scale 0.90-1); here the canvas is the input
    size, so the shape is kept. Geometric: meant for classifiers (a dense output would move with it).
    A batch's sizes, then its row and column offsets, are drawn at once and its copies made by one gather."""

    def __init__(self, min_scale: float = 0.9, fill: float = 0.0, seed: int = 0) -> None:
        super().__init__(seed)
        check_fraction("min_scale", min_scale)
        check_fraction("fill", fill, allow_zero=True)
        self.min_scale = float(min_scale)
        self.fill = float(fill)

    def forward(self, images: Tensor) -> Tensor:
        batch, channels, height, width = images.shape
        generator = self.generator(torch.device("cpu"))
        heights = torch.randint(math.ceil(self.min_scale * height), height + 1, (batch,), generator=generator)
        widths = (heights.double() * width / height).round().long().clamp(1, width)
        rows, row_inside = nearest_sources(uniform_below(height - heights + 1, generator), heights, height)
        cols, col_inside = nearest_sources(uniform_below(width - widths + 1, generator), widths, width)
        index = (rows[:, :, None] * width + cols[:, None, :]).flatten(1).to(images.device)
        copies = images.flatten(2).gather(2, index[:, None].expand(-1, channels, -1)).view_as(images)
        inside = (row_inside[:, :, None] & col_inside[:, None, :])[:, None].to(images.device)
        return torch.where(inside, copies, self.fill)


class GaussianNoise(RandomTransform):
    """Gaussian noise injection x + sigma n, n ~ N(0, I) drawn anew at every forward pass: the randomised
    base classifier of randomized smoothing (Cohen et al., ICML 2019, Sec. 3). Not clipped, so the noise has
    standard deviation exactly ``sigma``."""

    def __init__(self, sigma: float = 0.1, seed: int = 0) -> None:
        super().__init__(seed)
        check_positive("sigma", sigma)
        self.sigma = float(sigma)

    def forward(self, images: Tensor) -> Tensor:
        noise = torch.randn(images.shape, generator=self.generator(images.device), device=images.device)
        return images + self.sigma * noise.to(images.dtype)


DEFENCES: dict[str, type[nn.Module]] = {
    "jpeg": JPEGCompression,
    "bit_depth": BitDepthReduction,
    "median": MedianSmoothing,
    "resize_pad": RandomResizePad,
    "gaussian_noise": GaussianNoise,
}


def build_transform(name: str, **settings: Any) -> nn.Module:
    """The transform of the defence ``name`` in ``DEFENCES`` with its ``settings`` (``quality: 75``)."""
    if name not in DEFENCES:
        raise ValueError(f"unknown defence {name!r}; known: {', '.join(sorted(DEFENCES))}")
    cls = DEFENCES[name]
    try:
        inspect.signature(cls).bind(**settings)
    except TypeError as error:
        raise ValueError(f"defence {name!r}: settings {settings!r} do not fit ({error})") from error
    return cls(**settings)


def with_defence(module: nn.Module, name: str, **settings: Any) -> nn.Module:
    """``module`` behind the defence ``name`` (``DEFENCES``), the original untouched.

    A task module whose forward starts with its ``normalize`` step (classifier, segmenter) comes back as a
    copy whose ``normalize`` is ``InputDefence(normalize, transform)``: its forward, ``features`` and
    ``objective()`` then all see transformed images. Any other network is wrapped as
    ``InputDefence(module, transform)``, sharing its parameters.
    """
    transform = build_transform(name, **settings)
    if not isinstance(module, TaskModule):
        return InputDefence(module, transform)
    if not isinstance(getattr(module, "normalize", None), Normalize):
        raise ValueError(
            f"module {type(module).__name__} has no `normalize` step to put the defence {name!r} in front of "
            "(the detector normalises inside torchvision's transform)"
        )
    defended = copy.deepcopy(module)
    defended.normalize = InputDefence(defended.normalize, transform)
    return defended
