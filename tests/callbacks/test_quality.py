"""BRISQUE, SSIM and PSNR: reference behaviour, published trends, and exact means over images."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from skimage import data as skimage_data
from torch import Tensor
from torchmetrics.image import PeakSignalNoiseRatio
from torchvision.transforms.functional import gaussian_blur

from callbacks import brisque as brisque_module
from callbacks.brisque import MIN_SIZE, brisque, fit_aggd, fit_ggd, halve, load_brisque_model, mscn
from callbacks.quality import BRISQUEScore, PSNRScore, SSIMScore, reference_quality_metrics
from tests.realdata import require_shared

NOISE_LEVELS = (0.05, 0.1, 0.2)
BLUR_SIGMAS = (1.0, 2.0, 4.0)


def as_batch(array: np.ndarray) -> Tensor:
    """uint8 (H, W) or (H, W, 3) -> float (1, C, H, W) in [0, 1]."""
    image = torch.tensor(array, dtype=torch.float32) / 255
    return image[None, None] if image.dim() == 2 else image.permute(2, 0, 1)[None]


def noisy(images: Tensor, sigma: float, seed: int = 0) -> Tensor:
    noise = torch.randn(images.shape, generator=torch.Generator().manual_seed(seed))
    return (images + sigma * noise).clamp(0, 1)


def blurred(images: Tensor, sigma: float) -> Tensor:
    return gaussian_blur(images, kernel_size=2 * math.ceil(3 * sigma) + 1, sigma=sigma)


def one_over_f_fields(count: int, size: int, exponent: float, seed: int) -> Tensor:
    """Random-phase fields, amplitude spectrum 1/f^exponent, scaled to [0, 1]: (count, 1, size, size)."""
    generator = torch.Generator().manual_seed(seed)
    frequency = torch.fft.fftfreq(size)[:, None].square() + torch.fft.rfftfreq(size)[None, :].square()
    amplitude = frequency.sqrt().clamp(min=1 / size) ** -exponent
    shape = (count, size, size // 2 + 1)
    spectrum = torch.complex(torch.randn(shape, generator=generator), torch.randn(shape, generator=generator))
    fields = torch.fft.irfft2(spectrum * amplitude, s=(size, size))
    low = fields.amin(dim=(1, 2), keepdim=True)
    high = fields.amax(dim=(1, 2), keepdim=True)
    return ((fields - low) / (high - low)).unsqueeze(1)


def assert_distortions_raise_score(images: Tensor) -> None:
    """Per image: clean < weakest distortion < ... < strongest, for Gaussian noise and for blur."""
    variants = [images, *(noisy(images, s) for s in NOISE_LEVELS), *(blurred(images, s) for s in BLUR_SIGMAS)]
    scores = brisque(torch.cat(variants)).view(len(variants), -1)
    clean, noise, blur = scores[:1], scores[1 : 1 + len(NOISE_LEVELS)], scores[1 + len(NOISE_LEVELS) :]
    for name, distorted in (("noise", noise), ("blur", blur)):
        ladder = torch.cat([clean, distorted])
        assert (ladder.diff(dim=0) > 0).all(), f"{name} does not raise BRISQUE step by step:\n{ladder}"


@pytest.fixture(scope="module")
def camera() -> Tensor:
    """scikit-image's cameraman photograph (512 x 512 grey), shipped inside the package."""
    return as_batch(skimage_data.camera())


def test_cameraman_scores_as_the_reference_pipeline(camera: Tensor) -> None:
    # -13.7084: the LIVE model on the MATLAB features of this image (an independent numpy/libsvm port
    # of brisque_feature.m agreed to 1e-10).
    assert brisque(camera).item() == pytest.approx(-13.7084, abs=1e-3)


def test_noise_and_blur_raise_the_score_of_a_photograph(camera: Tensor) -> None:
    assert_distortions_raise_score(F.interpolate(camera, size=(256, 256), mode="area"))


def test_noise_and_blur_raise_the_score_of_synthetic_fields() -> None:
    fields = one_over_f_fields(count=3, size=128, exponent=1.6, seed=1)
    assert ((brisque(fields) > 0) & (brisque(fields) < 50)).all()
    assert_distortions_raise_score(fields)


def load_photograph(path: Path, side: int = 256) -> Tensor:
    with Image.open(path) as image:
        image.draft("RGB", (side, side))
        image = image.convert("RGB")
        image.thumbnail((side, side), Image.Resampling.BICUBIC)
        return as_batch(np.asarray(image))


@pytest.mark.realdata
@pytest.mark.parametrize(
    ("folder", "count"),
    [("kvasir_seg_mini/images", 2), ("cxr_lung_seg/test/images", 2), ("idrid_mini", 2)],
)
def test_real_photographs_score_plausibly_and_distortions_raise_it(folder: str, count: int) -> None:
    paths = sorted(require_shared(folder).glob("*.jpg"))[:count]
    for image in map(load_photograph, paths):
        assert -20 < brisque(image).item() < 45
        assert_distortions_raise_score(image)


def test_flat_regions_have_exactly_zero_mscn() -> None:
    grey = 255 * torch.rand(1, 40, 40, dtype=torch.float64)
    grey[:, 8:32, 8:32] = 102.0
    assert (mscn(grey)[:, 11:29, 11:29] == 0).all()
    assert (mscn(grey)[:, :8] != 0).all()


def test_batch_equals_images_one_by_one(camera: Tensor) -> None:
    crops = torch.cat([camera[..., :96, :128], camera[..., 200:296, 100:228], camera[..., -96:, -128:]])
    batch = torch.cat([noisy(crops[:1], 0.02), crops[1:2], blurred(crops[2:], 1.0)]).expand(-1, 3, -1, -1)
    one_by_one = torch.cat([brisque(image[None]) for image in batch])
    torch.testing.assert_close(brisque(batch), one_by_one, rtol=1e-9, atol=1e-9)


def test_a_grey_image_in_three_channels_scores_as_one_channel(camera: Tensor) -> None:
    crop = camera[..., :64, :64]
    torch.testing.assert_close(brisque(crop.expand(-1, 3, -1, -1)), brisque(crop), rtol=1e-6, atol=1e-6)


def test_smallest_size_works_and_smaller_raises() -> None:
    assert brisque(one_over_f_fields(2, MIN_SIZE, 1.6, seed=0)).isfinite().all()
    with pytest.raises(ValueError, match=f"{MIN_SIZE}x{MIN_SIZE}.*\\(12, 40\\)"):
        brisque(torch.rand(1, 1, 12, 40))


@pytest.mark.parametrize(
    ("images", "message"),
    [
        (torch.rand(1, 2, 32, 32), "C = 1 or 3"),
        (torch.rand(32, 32), "C = 1 or 3"),
        (torch.randn(1, 3, 32, 32), r"\[0, 1\]"),
    ],
)
def test_invalid_images_are_refused(images: Tensor, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        brisque(images)


def test_an_all_black_image_has_no_score_and_is_left_out_of_the_mean(camera: Tensor) -> None:
    crop = camera[..., :64, :64]
    assert brisque(torch.zeros(1, 1, 64, 64)).isnan().all()
    metric = BRISQUEScore()
    metric.update(torch.cat([crop, torch.zeros_like(crop)]))
    assert metric.compute().item() == pytest.approx(brisque(crop).item())
    assert (metric.count.item(), metric.undefined.item()) == (1, 1)


def sample_ggd(shape: float, left: float, right: float, count: int, seed: int) -> Tensor:
    """Samples of an AGGD with the given shape and one-sided variances (a GGD when left == right)."""
    generator = torch.Generator().manual_seed(seed)
    spread = math.sqrt(math.gamma(1 / shape) / math.gamma(3 / shape))
    beta_left, beta_right = spread * math.sqrt(left), spread * math.sqrt(right)
    gamma_draws = torch._standard_gamma(torch.full((count,), 1 / shape, dtype=torch.float64), generator)
    magnitude = gamma_draws ** (1 / shape)
    uniform = torch.rand(count, generator=generator, dtype=torch.float64)
    on_left = uniform < beta_left / (beta_left + beta_right)
    return torch.where(on_left, -beta_left * magnitude, beta_right * magnitude)


@pytest.mark.parametrize("shape", [0.6, 1.0, 2.0, 3.0])
def test_ggd_fit_recovers_shape_and_variance(shape: float) -> None:
    alpha, variance = fit_ggd(sample_ggd(shape, 0.5, 0.5, 400_000, seed=int(10 * shape)))
    assert alpha.item() == pytest.approx(shape, rel=0.04)
    assert variance.item() == pytest.approx(0.5, rel=0.02)


def test_aggd_fit_recovers_shape_variances_and_mean() -> None:
    shape, left, right = 0.8, 0.04, 0.25
    alpha, mean, left_fit, right_fit = fit_aggd(sample_ggd(shape, left, right, 400_000, seed=3))
    assert alpha.item() == pytest.approx(shape, rel=0.04)
    assert (left_fit.item(), right_fit.item()) == pytest.approx((left, right), rel=0.03)
    # The AGGD's mean: eta = (beta_r - beta_l) Gamma(2/a) / Gamma(1/a).
    spread = math.sqrt(math.gamma(1 / shape) / math.gamma(3 / shape))
    expected = spread * (math.sqrt(right) - math.sqrt(left)) * math.gamma(2 / shape) / math.gamma(1 / shape)
    assert mean.item() == pytest.approx(expected, rel=0.03)


def test_halving_keeps_constants_rounds_up_and_matches_antialiased_bicubic_inside() -> None:
    grey = torch.rand(2, 41, 36, dtype=torch.float64)
    half = halve(grey)
    assert half.shape == (2, 21, 18)
    constant = torch.full((1, 41, 36), 7.0, dtype=torch.float64)
    torch.testing.assert_close(halve(constant), torch.full((1, 21, 18), 7.0, dtype=torch.float64))
    reference = F.interpolate(grey[:, None, :40], scale_factor=0.5, mode="bicubic", antialias=True)[:, 0]
    torch.testing.assert_close(half[:, 2:-3, 2:-2], reference[:, 2:-2, 2:-2])


def test_svr_matches_libsvm() -> None:
    svmutil = pytest.importorskip("libsvm.svmutil")
    model = load_brisque_model()
    generator = torch.Generator().manual_seed(0)
    span = model.feature_max - model.feature_min
    uniform = torch.rand(8, span.numel(), generator=generator, dtype=torch.float64)
    features = model.feature_min + span * uniform
    svm = svmutil.svm_load_model(str(brisque_module.model_directory() / "svm.txt"))
    scaled = (-1 + 2 * (features - model.feature_min) / span).tolist()
    expected, _, _ = svmutil.svm_predict([0.0] * len(scaled), scaled, svm, "-q")
    torch.testing.assert_close(model.predict(features), torch.tensor(expected, dtype=torch.float64))


def test_missing_package_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(brisque_module.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(FileNotFoundError, match="'brisque'"):
        brisque_module.model_directory()


def image_pairs(seed: int = 0) -> list[tuple[Tensor, Tensor]]:
    """Uneven batches (3, 1, 2) of clean fields and their noisy versions, one noise level per image."""
    clean = one_over_f_fields(6, 32, 1.6, seed)
    sigmas = torch.linspace(0.01, 0.2, 6).view(-1, 1, 1, 1)
    noise = torch.randn(clean.shape, generator=torch.Generator().manual_seed(seed))
    adversarial = (clean + sigmas * noise).clamp(0, 1)
    return [(adversarial[a:b], clean[a:b]) for a, b in ((0, 3), (3, 4), (4, 6))]


METRICS = {
    "brisque": (BRISQUEScore, lambda adversarial, clean: (adversarial,)),
    "ssim": (SSIMScore, lambda adversarial, clean: (adversarial, clean)),
    "psnr": (PSNRScore, lambda adversarial, clean: (adversarial, clean)),
}


@pytest.mark.parametrize("name", METRICS)
def test_metric_is_the_mean_over_images_across_updates_and_ranks(name: str) -> None:
    make, arguments = METRICS[name]
    pairs = image_pairs()
    per_image = torch.cat([make().per_image(*arguments(*pair)) for pair in pairs]).double()
    single = make()
    for pair in pairs:
        single.update(*arguments(*pair))
    torch.testing.assert_close(single.compute(), per_image.mean())
    # Two ranks holding 4 and 2 images: summed states give the mean over the 6 images.
    rank0, rank1 = make(), make()
    for pair in pairs[:2]:
        rank0.update(*arguments(*pair))
    rank1.update(*arguments(*pairs[2]))
    rank0.merge_state(rank1)
    torch.testing.assert_close(rank0.compute(), per_image.mean())
    assert per_image.mean() != per_image[:4].mean() / 2 + per_image[4:].mean() / 2


def test_psnr_is_the_mean_of_per_image_psnr_not_the_pooled_psnr() -> None:
    clean = torch.full((2, 1, 16, 16), 0.5)
    adversarial = clean + torch.tensor([0.01, 0.1]).view(2, 1, 1, 1)
    metric = PSNRScore()
    metric.update(adversarial, clean)
    expected = (-10 * math.log10(0.01**2) - 10 * math.log10(0.1**2)) / 2
    assert metric.compute().item() == pytest.approx(expected, abs=1e-4)
    pooled = PeakSignalNoiseRatio(data_range=1.0)(adversarial, clean).item()
    assert pooled == pytest.approx(-10 * math.log10((0.01**2 + 0.1**2) / 2), abs=1e-4)
    assert abs(pooled - expected) > 5


def test_identical_images_give_ssim_one_and_capped_psnr() -> None:
    clean = one_over_f_fields(2, 24, 1.6, seed=5).expand(-1, 3, -1, -1)
    adversarial = torch.cat([clean[:1], noisy(clean[1:], 0.05)])
    metrics = reference_quality_metrics(max_psnr=80.0)
    metrics.update(clean, clean)
    assert metrics.compute()["ssim"].item() == pytest.approx(1.0, abs=1e-6)
    assert metrics.compute()["psnr"].item() == 80.0
    psnr = PSNRScore(max_psnr=80.0)
    psnr.update(adversarial, clean)
    noisy_psnr = -10 * torch.log10((adversarial[1] - clean[1]).double().square().mean())
    assert psnr.compute().item() == pytest.approx((80.0 + noisy_psnr.item()) / 2)


def test_reference_metrics_refuse_bad_arguments() -> None:
    with pytest.raises(ValueError, match="max_psnr"):
        PSNRScore(max_psnr=0.0)
    with pytest.raises(ValueError, match="adversarial and clean"):
        SSIMScore().update(torch.rand(1, 1, 16, 16), torch.rand(1, 1, 16, 17))
    with pytest.raises(ValueError, match="clean must lie in"):
        PSNRScore().update(torch.rand(1, 1, 16, 16), 2 * torch.rand(1, 1, 16, 16) + 0.5)
