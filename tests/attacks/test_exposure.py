"""Exposure attacks: Laplacian pyramid, bracketed exposures, BEF / CBEF and the multiplicative attack."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor
from torchmetrics.functional.image import structural_similarity_index_measure as ssim

from attacks.exposure import (
    BracketedExposureFusion,
    ConvolutionalBracketedExposureFusion,
    MultiplicativeExposure,
    bracket_exposures,
    bracketed,
    neutral_weights,
)
from attacks.pyramid import laplacian_pyramid, reconstruct
from tests.attacks.invariants import accuracy, assert_invariants

SIZES = [(16, 16), (15, 17), (7, 5), (1, 1)]


class RandomDirection:
    """Stand-in objective whose loss is a fixed random linear function of the image: running an
    attack on it gives a random change with the attack's own step structure (the random control)."""

    def __init__(self, model: torch.nn.Module, direction: Tensor) -> None:
        self.model = model
        self.direction = direction

    def forward(self, images: Tensor) -> Tensor:
        return images

    def loss(self, outputs: Tensor, target: Tensor) -> Tensor:
        return (outputs * self.direction).flatten(1).sum(dim=1)




@pytest.mark.parametrize("levels", [1, 3, 5])
@pytest.mark.parametrize("size", SIZES)
def test_pyramid_reconstruction_is_exact(levels: int, size: tuple[int, int]) -> None:
    images = torch.rand(2, 3, *size)
    pyramid = laplacian_pyramid(images, levels)
    assert len(pyramid) == levels
    torch.testing.assert_close(reconstruct(pyramid), images, atol=1e-6, rtol=0)


def test_pyramid_levels_halve_with_ceiling_and_one_level_is_the_image() -> None:
    images = torch.rand(1, 3, 15, 17)
    shapes = [tuple(level.shape[-2:]) for level in laplacian_pyramid(images, 4)]
    assert shapes == [(15, 17), (8, 9), (4, 5), (2, 3)]
    (only,) = laplacian_pyramid(images, 1)
    assert only is images


def test_pyramid_bands_of_a_constant_image_are_zero() -> None:
    images = torch.full((1, 1, 13, 10), 0.3)
    *bands, residual = laplacian_pyramid(images, 3)
    for band in bands:
        assert band.abs().max() < 1e-6
    torch.testing.assert_close(residual, torch.full_like(residual, 0.3))


@pytest.mark.parametrize("brackets", [2, 3, 4, 5, 7])
def test_bracket_exposures_are_evenly_spaced_and_symmetric(brackets: int) -> None:
    exposures = bracket_exposures(brackets, 1.5)
    torch.testing.assert_close(exposures[[0, -1]], torch.tensor([-1.5, 1.5]))
    torch.testing.assert_close(exposures.diff(), torch.full((brackets - 1,), 3.0 / (brackets - 1)))
    torch.testing.assert_close(exposures, -exposures.flip(0))
    if brackets % 2:
        assert exposures[brackets // 2].item() == 0.0


@pytest.mark.parametrize("brackets", [2, 3, 4, 5])
def test_neutral_weights_reproduce_unit_gain(brackets: int) -> None:
    exposures = bracket_exposures(brackets, 1.0)
    weights = neutral_weights(exposures)
    assert (weights >= 0).all() and (weights > 0).sum() == (1 if brackets % 2 else 2)
    torch.testing.assert_close(weights.sum(), torch.tensor(1.0))
    torch.testing.assert_close((weights * 2.0**exposures).sum(), torch.tensor(1.0))


def test_brackets_saturate_like_a_sensor() -> None:
    images = torch.tensor([0.2, 0.6]).view(1, 1, 1, 2)
    stack = bracketed(images, torch.tensor([-1.0, 0.0, 1.0]))
    expected = torch.tensor([[0.1, 0.3], [0.2, 0.6], [0.4, 1.0]])
    torch.testing.assert_close(stack.view(3, 2), expected)


@pytest.mark.parametrize("brackets", [4, 5])
@pytest.mark.parametrize("attack_class", [BracketedExposureFusion, ConvolutionalBracketedExposureFusion])
def test_fusion_without_steps_returns_the_input(toy_classifier, toy_batch, attack_class, brackets) -> None:
    images, labels = toy_batch[0][:8], toy_batch[1][:8]
    attack = attack_class(levels=3, brackets=brackets, alpha=0.0, steps=1)
    torch.testing.assert_close(attack(toy_classifier, images, labels).adv_images, images, atol=1e-6, rtol=0)


@pytest.mark.parametrize("levels", [1, 3])
def test_cbef_with_one_tap_is_bef(toy_classifier, toy_batch, levels: int) -> None:
    images, labels = toy_batch[0][:8], toy_batch[1][:8]
    settings = dict(levels=levels, brackets=5, exposure_range=1.0, alpha=0.02, steps=5)
    bef = BracketedExposureFusion(**settings)(toy_classifier, images, labels)
    cbef = ConvolutionalBracketedExposureFusion(kernel_size=1, **settings)(toy_classifier, images, labels)
    assert not torch.allclose(bef.adv_images, images, atol=1e-3)
    torch.testing.assert_close(cbef.adv_images, bef.adv_images, atol=1e-6, rtol=0)


def test_cbef_taps_are_the_shifted_neighbours() -> None:
    bands = torch.rand(2, 3, 1, 6, 7)
    taps = ConvolutionalBracketedExposureFusion(kernel_size=3).taps(bands)
    assert taps.shape == (2, 3, 9, 1, 6, 7)
    for index in range(9):
        dy, dx = index // 3 - 1, index % 3 - 1
        shifted = bands[..., 1 + dy : 5 + dy, 1 + dx : 6 + dx]
        torch.testing.assert_close(taps[:, :, index, :, 1:-1, 1:-1], shifted, atol=0, rtol=0)


@pytest.mark.parametrize(
    "attack", [BracketedExposureFusion(alpha=0.05), ConvolutionalBracketedExposureFusion(alpha=0.05)]
)
def test_weights_stay_normalised(toy_classifier, toy_batch, attack: BracketedExposureFusion) -> None:
    images, labels, _ = toy_batch
    _, weights, _ = attack.optimise(toy_classifier, images[:8], labels[:8])
    for level in weights:
        assert (level >= 0).all()
        torch.testing.assert_close(level.sum(dim=(1, 2)), torch.ones_like(level.sum(dim=(1, 2))))
        centre = level[:, 2, attack.kernel_size**2 // 2]
        assert (centre < 1).any(), "weights never left the identity initialisation"


@pytest.mark.parametrize("objective_name", ["toy_classifier", "toy_segmenter"])
@pytest.mark.parametrize(
    "attack",
    [
        BracketedExposureFusion(),
        ConvolutionalBracketedExposureFusion(levels=2, kernel_size=3, steps=5),
        MultiplicativeExposure(eps=0.1, norm="linf"),
        MultiplicativeExposure(eps=0.5, norm="l2"),
    ],
    ids=lambda attack: f"{attack.name}",
)
def test_invariants(request, toy_batch, attack, objective_name: str) -> None:
    objective = request.getfixturevalue(objective_name)
    images, labels, masks = toy_batch
    target = labels if objective_name == "toy_classifier" else masks
    # CBEF's per-tap gradients are differences of nearly equal terms: a rounding-level difference
    # between batched and single-sample convolutions can flip a sign, and the pyramid spreads that
    # step over several pixels (seen on the segmenter with 2 threads); checked loosely below
    independent = not (attack.name == "cbef" and objective_name == "toy_segmenter")
    assert_invariants(
        attack, objective, images[:8], target[:8], norm=None, eps=None, batch_independent=independent
    )


def test_cbef_sample_alone_matches_the_batch_almost_everywhere(toy_segmenter, toy_batch) -> None:
    images, _, masks = toy_batch
    attack = ConvolutionalBracketedExposureFusion(levels=2, kernel_size=3, steps=5)
    batch = attack(toy_segmenter, images[:8], masks[:8]).adv_images
    for index in range(8):
        alone = attack(toy_segmenter, images[index : index + 1], masks[index : index + 1]).adv_images
        assert ((alone - batch[index : index + 1]).abs() > 1e-5).float().mean() < 0.05


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_multiplicative_budget_is_on_the_exposure_map(toy_classifier, toy_batch, norm: str) -> None:
    images, labels, _ = toy_batch
    eps = 0.1 if norm == "linf" else 1.0
    result = MultiplicativeExposure(eps=eps, norm=norm)(toy_classifier, images, labels)
    ratio = (result.adv_images / images - 1).flatten(1)
    size = ratio.abs().amax(dim=1) if norm == "linf" else ratio.norm(dim=1)
    assert (size <= eps + 1e-5).all()
    assert (size > 0.5 * eps).all()


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_multiplicative_beats_random_exposure_of_the_same_size(toy_classifier, toy_batch, norm: str) -> None:
    images, labels, _ = toy_batch
    eps = 0.1 if norm == "linf" else 1.0
    adv = MultiplicativeExposure(eps=eps, norm=norm)(toy_classifier, images, labels).adv_images
    signs = torch.randint(0, 2, images.shape, generator=torch.Generator().manual_seed(0)) * 2.0 - 1.0
    if norm == "l2":
        signs = signs / signs.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
    random = (images * (1 + eps * signs)).clamp(0, 1)
    assert accuracy(toy_classifier, adv, labels) <= 0.1
    assert accuracy(toy_classifier, random, labels) >= 0.9


@pytest.mark.parametrize(
    "attack_class", [BracketedExposureFusion, ConvolutionalBracketedExposureFusion], ids=["bef", "cbef"]
)
def test_fusion_beats_a_random_fusion_of_similar_ssim(toy_classifier, toy_batch, attack_class) -> None:
    images, labels = toy_batch[0][:16], toy_batch[1][:16]
    attack = attack_class()
    adv = attack(toy_classifier, images, labels).adv_images
    direction = torch.randn(images.shape, generator=torch.Generator().manual_seed(0))
    random = attack(RandomDirection(toy_classifier.model, direction), images, labels).adv_images
    assert abs(ssim(adv, images, data_range=1.0) - ssim(random, images, data_range=1.0)) < 0.05
    attacked, control = accuracy(toy_classifier, adv, labels), accuracy(toy_classifier, random, labels)
    assert attacked <= 0.1
    assert control >= attacked + 0.25


@pytest.mark.parametrize(
    ("build", "argument"),
    [
        (lambda: BracketedExposureFusion(levels=0), "levels"),
        (lambda: BracketedExposureFusion(brackets=1), "brackets"),
        (lambda: BracketedExposureFusion(exposure_range=0.0), "exposure_range"),
        (lambda: BracketedExposureFusion(alpha=-0.1), "alpha"),
        (lambda: BracketedExposureFusion(steps=0), "steps"),
        (lambda: ConvolutionalBracketedExposureFusion(kernel_size=2), "kernel_size"),
        (lambda: MultiplicativeExposure(eps=-0.1), "eps"),
        (lambda: MultiplicativeExposure(norm="l1"), "norm"),
    ],
)
def test_bad_arguments_raise_naming_them(build, argument: str) -> None:
    with pytest.raises(ValueError, match=argument):
        build()
