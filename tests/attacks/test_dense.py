"""Dense Adversary Generation on the toy segmenter and on a classifier seen as one position."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from attacks.base import SampleRandom
from attacks.dense import DenseAdversaryGeneration, adversarial_class_maps
from attacks.smia import SMIA
from lightning_modules.detector import DetectorModule
from lightning_modules.objectives import SegmentationObjective
from tests.attacks.invariants import assert_independent_with_ids, assert_invariants


def correct_fraction(objective, images: Tensor, target: Tensor) -> float:
    with torch.no_grad():
        return (objective.predict(objective.forward(images)) == target).float().mean().item()


def test_class_maps_never_keep_a_class() -> None:
    maps = adversarial_class_maps(5, "permutation", SampleRandom(0, 64))
    classes = torch.arange(5)
    assert (maps != classes).all()
    assert (maps.sort(dim=1).values == classes).all(), "adversarial labels of distinct classes must differ"
    assert len({tuple(row) for row in maps.tolist()}) > 1
    nxt = adversarial_class_maps(4, "next", SampleRandom(0, 3))
    assert nxt.tolist() == [[1, 2, 3, 0]] * 3


@pytest.mark.parametrize("objective_name", ["toy_classifier", "toy_segmenter"])
@pytest.mark.parametrize(
    ("attack", "norm", "eps"),
    [
        (DenseAdversaryGeneration(max_iter=30, label_mapping="next"), None, None),
        (DenseAdversaryGeneration(max_iter=30, label_mapping="next", eps=4 / 255), "linf", 4 / 255),
    ],
    ids=["unbounded", "linf"],
)
def test_invariants(request, toy_batch, attack, norm, eps, objective_name: str) -> None:
    objective = request.getfixturevalue(objective_name)
    images, labels, masks = toy_batch
    target = labels if objective_name == "toy_classifier" else masks
    assert_invariants(attack, objective, images[:8], target[:8], norm=norm, eps=eps)


def test_random_label_permutation_is_seeded(toy_segmenter, toy_batch) -> None:
    images, _, masks = toy_batch
    attack = DenseAdversaryGeneration(max_iter=10, seed=3)
    assert_invariants(
        attack, toy_segmenter, images[:4], masks[:4], norm=None, eps=None, batch_independent=False
    )
    assert_independent_with_ids(attack, toy_segmenter, images, masks)


def test_first_step_has_linf_gamma(toy_segmenter, toy_batch) -> None:
    images, _, masks = toy_batch
    gamma = 2 / 255
    result = DenseAdversaryGeneration(gamma=gamma, max_iter=1)(toy_segmenter, images, masks)
    size = (result.adv_images - images).flatten(1).abs().amax(dim=1)
    torch.testing.assert_close(size, torch.full_like(size, gamma))
    assert (result.trace.iterations == 1).all()


class IgnoringEveryPixel(SegmentationObjective):
    """Dense labels -1 at every pixel, as the detection objective gives its padded proposals."""

    def dense_target(self, outputs: Tensor, target: Tensor) -> Tensor:
        return torch.full_like(target, -1)


def test_positions_already_wrong_or_ignored_are_not_targets(toy_segmenter, toy_batch) -> None:
    images, _, masks = toy_batch
    with torch.no_grad():
        wrong = 1 - toy_segmenter.predict(toy_segmenter.forward(images))
    for objective, target in ((toy_segmenter, wrong), (IgnoringEveryPixel(toy_segmenter.model), masks)):
        result = DenseAdversaryGeneration()(objective, images, target)
        assert torch.equal(result.adv_images, images)
        assert (result.trace.iterations == 0).all()


def test_segmentation_pixels_mostly_flip_unlike_random_noise(toy_segmenter, toy_batch) -> None:
    images, _, masks = toy_batch
    result = DenseAdversaryGeneration(gamma=2 / 255, max_iter=25)(toy_segmenter, images, masks)
    size = (result.adv_images - images).flatten(1).abs().amax(dim=1).view(-1, 1, 1, 1)
    signs = torch.randint(0, 2, images.shape, generator=torch.Generator().manual_seed(0)) * 2.0 - 1.0
    noisy = (images + size * signs).clamp(0, 1)
    assert correct_fraction(toy_segmenter, images, masks) > 0.99
    assert correct_fraction(toy_segmenter, result.adv_images, masks) < 0.25
    assert correct_fraction(toy_segmenter, noisy, masks) > 0.9


def test_classifier_is_one_position_and_stops_when_fooled(toy_classifier, toy_batch) -> None:
    images, labels, _ = toy_batch
    result = DenseAdversaryGeneration()(toy_classifier, images, labels)
    assert correct_fraction(toy_classifier, result.adv_images, labels) == 0.0
    assert (result.trace.iterations >= 1).all() and (result.trace.iterations < 200).all()


def test_eps_bounds_the_perturbation_and_weakens_the_attack(toy_segmenter, toy_batch) -> None:
    images, _, masks = toy_batch
    bounded = DenseAdversaryGeneration(gamma=2 / 255, max_iter=15, eps=2 / 255)(toy_segmenter, images, masks)
    free = DenseAdversaryGeneration(gamma=2 / 255, max_iter=15)(toy_segmenter, images, masks)
    assert (bounded.adv_images - images).abs().max() <= 2 / 255 + 1e-6
    assert correct_fraction(toy_segmenter, bounded.adv_images, masks) > correct_fraction(
        toy_segmenter, free.adv_images, masks
    )


@pytest.mark.parametrize(
    ("attack", "norm", "eps"),
    [
        (SMIA(eps=8 / 255, steps=2), "linf", 8 / 255),
        (DenseAdversaryGeneration(gamma=2 / 255, max_iter=2), None, None),
    ],
    ids=["smia", "dag"],
)
def test_detection_proposals_are_attacked_through_the_objective(attack, norm, eps) -> None:
    """SMIA's divergence and DAG's per-proposal logits on a tiny random-weight Faster R-CNN: the
    plumbing and the invariants. Its input gradients are at rounding level (untrained heads), so the
    normalised step directions are noise and batch independence is not checked; effectiveness needs
    a trained detector."""
    torch.manual_seed(0)
    objective = DetectorModule(num_classes=2, min_size=64, max_size=64, proposals_per_image=10).objective()
    images = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    # the untrained head predicts class 2 for every proposal: proposals matched to these boxes start correct
    boxes = {
        "boxes": torch.tensor([[0.0, 0.0, 64.0, 64.0], [8.0, 8.0, 56.0, 56.0]]),
        "labels": torch.tensor([2, 2]),
    }
    result = assert_invariants(attack, objective, images, [boxes, boxes], norm, eps, batch_independent=False)
    assert (result.trace.iterations > 0).all()
    assert (result.adv_images - images).abs().amax() > 0


@pytest.mark.parametrize(
    ("kwargs", "argument"),
    [
        (dict(gamma=0.0), "gamma"),
        (dict(max_iter=0), "max_iter"),
        (dict(label_mapping="shuffle"), "label_mapping"),
        (dict(eps=-1.0), "eps"),
    ],
)
def test_bad_arguments_raise_naming_them(kwargs, argument: str) -> None:
    with pytest.raises(ValueError, match=argument):
        DenseAdversaryGeneration(**kwargs)
