"""Input-transformation defences: closed forms, agreement with reference code, gradients, and wrapping."""

from __future__ import annotations

import io

import numpy as np
import pytest
import scipy.ndimage
import torch
from PIL import Image
from torch import nn

from attacks.adaptive import InputTransformed
from lightning_modules.classifier import ClassifierModule
from lightning_modules.defences import (
    DEFENCES,
    BitDepthReduction,
    GaussianNoise,
    InputDefence,
    JPEGCompression,
    MedianSmoothing,
    RandomResizePad,
    build_transform,
    with_defence,
)
from lightning_modules.segmenter import SegmenterModule
from lightning_modules.task_module import TaskModule


def smooth_images(batch: int, channels: int, height: int = 61, width: int = 59) -> torch.Tensor:
    """Images in [0, 1] interpolated from a coarse random grid (edges not multiples of 8), as photos are."""
    coarse = torch.rand(batch, channels, 8, 8, generator=torch.Generator().manual_seed(0))
    return nn.functional.interpolate(coarse, size=(height, width), mode="bilinear")


def pil_jpeg(image: torch.Tensor, quality: int) -> torch.Tensor:
    """The same image written and read back by PIL (libjpeg) at ``quality`` without chroma subsampling."""
    levels = (image * 255).round().byte().permute(1, 2, 0).numpy()
    grey = levels.shape[2] == 1
    buffer = io.BytesIO()
    Image.fromarray(levels[..., 0] if grey else levels).save(buffer, "JPEG", quality=quality, subsampling=0)
    decoded = np.asarray(Image.open(io.BytesIO(buffer.getvalue())), dtype=np.float32) / 255
    return torch.from_numpy(decoded[..., None] if grey else decoded).permute(2, 0, 1)


@pytest.mark.parametrize("bits", [1, 3, 5])
def test_bit_depth_keeps_two_to_the_bits_evenly_spaced_levels(bits):
    ramp = torch.linspace(0, 1, 1001).view(1, 1, 1, -1)
    squeezed = BitDepthReduction(bits)(ramp)
    top = 2**bits - 1
    assert torch.equal(squeezed.unique(), torch.arange(top + 1) / top)
    assert (squeezed - ramp).abs().max() <= 0.5 / top + 1e-6  # nearest level


@pytest.mark.parametrize("kernel_size", [2, 3, 5])
def test_median_equals_scipy_median_filter(kernel_size):
    images = torch.rand(2, 3, 13, 11)
    reference = scipy.ndimage.median_filter(images.numpy(), size=(1, 1, kernel_size, kernel_size), mode="reflect")
    assert torch.equal(MedianSmoothing(kernel_size)(images), torch.from_numpy(reference))


def test_median_removes_an_isolated_bright_pixel_and_keeps_an_edge():
    images = torch.zeros(1, 1, 9, 9)
    images[..., 4, 4] = 1.0
    assert torch.equal(MedianSmoothing(3)(images), torch.zeros_like(images))
    edge = torch.zeros(1, 1, 9, 9)
    edge[..., 5:] = 1.0
    assert torch.equal(MedianSmoothing(3)(edge), edge)


@pytest.mark.parametrize(("channels", "quality"), [(3, 50), (3, 75), (1, 75)])
def test_jpeg_agrees_with_libjpeg(channels, quality):
    images = smooth_images(3, channels)
    ours = JPEGCompression(quality)(images)
    reference = torch.stack([pil_jpeg(image, quality) for image in images])
    assert ours.shape == images.shape and ours.min() >= 0 and ours.max() <= 1
    assert torch.equal((ours * 255).round() / 255, ours), "not 8-bit grey levels"
    distortion = (reference - images).abs().mean()
    disagreement = (ours - reference).abs().mean()
    assert (ours - images).abs().mean() > 0.5 / 255, "output equals the input"
    # measured: 0.13-0.27 grey levels (libjpeg's fixed-point DCT rounds a few coefficients the other way)
    assert disagreement < 0.4 / 255 and disagreement < 0.15 * distortion


def test_jpeg_distortion_falls_with_quality():
    images = smooth_images(2, 3)
    errors = [(JPEGCompression(q)(images) - images).abs().mean().item() for q in (10, 50, 95)]
    assert errors[0] > errors[1] > errors[2]


def test_gaussian_noise_has_the_set_sigma_and_is_reproducible_by_seed():
    images = torch.full((2, 3, 64, 64), 0.5)
    first = GaussianNoise(sigma=0.05, seed=3)
    noise = first(images) - images
    assert abs(noise.std().item() - 0.05) < 0.05 * 0.03  # 24576 draws: relative standard error 0.5 %
    assert abs(noise.mean().item()) < 0.05 * 0.03
    assert not torch.equal(first(images) - images, noise), "the same noise twice"
    assert torch.equal(GaussianNoise(sigma=0.05, seed=3)(images) - images, noise)


def copy_box(image: torch.Tensor) -> tuple[int, int, int, int]:
    """(top, left, height, width) of the bounding box of the non-zero pixels of an image's first channel."""
    rows, cols = image[0].nonzero().unbind(1)
    return int(rows.min()), int(cols.min()), int(rows.max() - rows.min() + 1), int(cols.max() - cols.min() + 1)


def test_resize_pad_keeps_the_shape_and_places_a_rescaled_copy():
    transform = RandomResizePad(min_scale=0.8, seed=1)
    images = torch.ones(6, 2, 20, 30)
    padded = transform(images)
    assert padded.shape == images.shape
    for image in padded:
        _, _, height, width = copy_box(image)
        assert 16 <= height <= 20 and width == round(height * 30 / 20)
        assert image.sum() == 2 * height * width  # one filled rectangle, zero elsewhere
    assert not torch.equal(transform(images), padded)
    assert torch.equal(RandomResizePad(min_scale=0.8, seed=1)(images), padded)


@pytest.mark.parametrize(("height", "width"), [(28, 28), (20, 30), (31, 17)])
def test_resize_pad_copies_are_torch_nearest_resizes_of_each_image(height, width):
    images = 0.1 + 0.9 * torch.rand(32, 3, height, width)  # no zero pixel: the zero fill shows where a copy ends
    padded = RandomResizePad(min_scale=0.5, seed=2)(images)
    for image, output in zip(images, padded, strict=True):
        top, left, size, size_w = copy_box(output)
        assert size_w == min(width, max(1, round(size * width / height)))
        expected = torch.zeros_like(image)
        expected[:, top : top + size, left : left + size_w] = nn.functional.interpolate(
            image[None], size=(size, size_w), mode="nearest"
        )[0]
        assert torch.equal(output, expected)


def test_resize_pad_draws_each_image_its_own_uniform_size_and_offsets():
    boxes = [copy_box(image) for image in RandomResizePad(min_scale=0.5, seed=0)(torch.ones(3000, 1, 8, 8))]
    sizes = torch.tensor([size for _, _, size, _ in boxes]).bincount(minlength=9)[4:]
    assert (sizes - 600).abs().max() < 5 * (3000 * 0.2 * 0.8) ** 0.5, sizes  # s uniform in 4..8
    for size in range(4, 9):
        offsets = torch.tensor([(top, left) for top, left, s, _ in boxes if s == size])
        expected = len(offsets) / (9 - size)  # offsets uniform in 0..8 - s, rows and columns alike
        for counts in (offsets[:, 0].bincount(), offsets[:, 1].bincount()):
            assert len(counts) == 9 - size and (counts - expected).abs().max() < 0.35 * expected, counts


@pytest.mark.parametrize(
    ("name", "settings", "argument"),
    [
        ("bit_depth", {"bits": 0}, "bits"),
        ("bit_depth", {"bits": 9}, "bits"),
        ("jpeg", {"quality": 0}, "quality"),
        ("jpeg", {"quality": 101}, "quality"),
        ("median", {"kernel_size": 0}, "kernel_size"),
        ("gaussian_noise", {"sigma": -0.1}, "sigma"),
        ("resize_pad", {"min_scale": 0.0}, "min_scale"),
        ("resize_pad", {"min_scale": 1.5}, "min_scale"),
        ("resize_pad", {"seed": -1}, "seed"),
        ("jpeg", {"bits": 3}, "bits"),
        ("blur", {}, "blur"),
    ],
)
def test_bad_settings_raise_a_value_error_naming_them(name, settings, argument):
    with pytest.raises(ValueError, match=argument):
        build_transform(name, **settings)


def input_gradient(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    x = images.clone().requires_grad_(True)
    (gradient,) = torch.autograd.grad(model(x).square().sum(), x)
    return gradient


@pytest.mark.parametrize(
    ("name", "settings", "masked"),
    [
        ("jpeg", {"quality": 75}, True),
        ("bit_depth", {"bits": 4}, True),
        ("median", {"kernel_size": 3}, False),
        ("resize_pad", {}, False),
        ("gaussian_noise", {"sigma": 0.05}, False),
    ],
)
def test_only_the_quantising_defences_mask_the_input_gradient(name, settings, masked):
    torch.manual_seed(0)
    network = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.LazyLinear(3))
    defended = InputDefence(network, build_transform(name, **settings))
    images = smooth_images(2, 3, 16, 16)
    gradient = input_gradient(defended, images)
    assert gradient.isfinite().all()
    assert bool(gradient.abs().max() == 0) is masked


def test_with_defence_wraps_a_classifier_copy_and_leaves_the_original():
    torch.manual_seed(0)
    module = ClassifierModule("resnet18", num_classes=3).eval()
    images = smooth_images(2, 3, 32, 32)
    before = module(images)
    defended = with_defence(module, "bit_depth", bits=2).eval()
    assert type(module.normalize).__name__ == "Normalize" and torch.equal(module(images), before)
    assert isinstance(defended.normalize, InputTransformed)
    squeezed = BitDepthReduction(2)(images)
    assert torch.equal(defended(images), module(squeezed))
    assert torch.equal(defended.objective().forward(images), module(squeezed))
    assert torch.equal(defended.features(images), module.features(squeezed))
    assert not torch.equal(defended(images), before)


def test_with_defence_wraps_a_segmenter_before_its_padding():
    torch.manual_seed(0)
    module = SegmenterModule(encoder_depth=3).eval()
    images = smooth_images(1, 1, 24, 20)
    defended = with_defence(module, "median", kernel_size=3).eval()
    assert torch.equal(defended.objective().forward(images), module(MedianSmoothing(3)(images)))


def test_with_defence_wraps_a_plain_network_sharing_its_parameters():
    network = nn.Conv2d(3, 2, 1)
    defended = with_defence(network, "jpeg", quality=50)
    assert isinstance(defended, InputDefence) and defended.network is network
    assert sorted(DEFENCES) == ["bit_depth", "gaussian_noise", "jpeg", "median", "resize_pad"]


def test_with_defence_rejects_a_task_module_without_normalisation():
    class Bare(TaskModule):
        pass

    with pytest.raises(ValueError, match="Bare"):
        with_defence(Bare(), "jpeg")
