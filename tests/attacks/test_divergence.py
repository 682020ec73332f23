"""KL-PGD (TRADES' inner maximisation): invariants, its start, its gradient is the KL's, and it diverges."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from attacks.base import input_gradient
from attacks.divergence import DivergenceObjective, KLDivergencePGD
from tests.attacks.invariants import accuracy, assert_independent_with_ids, assert_invariants

EPS = 8 / 255


def task(request, name: str, batch: tuple[Tensor, Tensor, Tensor]):
    images, labels, masks = batch
    return request.getfixturevalue(name), images, labels if name == "toy_classifier" else masks


def kl_from_clean(objective, images: Tensor, adv: Tensor) -> Tensor:
    """Per-sample KL(f(x) || f(x')) over the K-class logits, averaged over positions."""
    reference = objective.logits(objective.forward(images)).log_softmax(1)
    logits = objective.logits(objective.forward(adv)).log_softmax(1)
    return F.kl_div(logits, reference, log_target=True, reduction="none").sum(1).reshape(len(images), -1).mean(1)


@pytest.mark.parametrize("objective_name", ["toy_classifier", "toy_segmenter"])
@pytest.mark.parametrize(("norm", "eps"), [("linf", EPS), ("l2", 0.5)])
def test_invariants(request, toy_batch, objective_name: str, norm: str, eps: float) -> None:
    objective, images, target = task(request, objective_name, toy_batch)
    attack = KLDivergencePGD(eps=eps, norm=norm, steps=5)  # random start: batch independence needs ids (below)
    assert_invariants(attack, objective, images[:8], target[:8], norm, eps, batch_independent=False)


def test_same_result_alone_and_in_any_batch_with_ids(toy_classifier, toy_batch) -> None:
    images, labels, _ = toy_batch
    assert_independent_with_ids(KLDivergencePGD(eps=EPS, steps=3), toy_classifier, images, labels)


def test_divergence_objective_has_the_input_gradient_of_the_kl(request, toy_batch) -> None:
    for name in ("toy_classifier", "toy_segmenter"):
        objective, images, _ = task(request, name, toy_batch)
        adv = (images + EPS * torch.randn(images.shape).sign()).clamp(0, 1)
        with torch.no_grad():
            reference = objective.forward(images)
        gradient, _ = input_gradient(DivergenceObjective(objective), adv, reference)
        x = adv.clone().requires_grad_(True)
        (expected,) = torch.autograd.grad(kl_from_clean(objective, images, x).sum(), x)
        torch.testing.assert_close(gradient, expected, rtol=1e-4, atol=1e-7)


def test_start_is_a_small_gaussian_around_the_clean_image_and_the_label_is_not_used(toy_classifier, toy_batch):
    images, labels, _ = toy_batch
    standing = KLDivergencePGD(eps=EPS, alpha=0.0, steps=1, start_std=0.002)(toy_classifier, images, labels)
    noise = torch.randn(images.shape, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(standing.adv_images, (images + 0.002 * noise).clamp(0, 1), rtol=0, atol=1e-7)
    attack = KLDivergencePGD(eps=EPS, steps=5)
    assert torch.equal(
        attack(toy_classifier, images, labels).adv_images, attack(toy_classifier, images, (labels + 1) % 4).adv_images
    )


@pytest.mark.parametrize("objective_name", ["toy_classifier", "toy_segmenter"])
def test_it_moves_the_prediction_away_from_the_clean_one(request, toy_batch, objective_name: str) -> None:
    objective, images, target = task(request, objective_name, toy_batch)
    adv = KLDivergencePGD(eps=EPS, steps=10)(objective, images, target).adv_images
    corner = (images + EPS * torch.randn(images.shape).sign()).clamp(0, 1)
    with torch.no_grad():
        assert kl_from_clean(objective, images, adv).mean() > 5 * kl_from_clean(objective, images, corner).mean()
        clean_predictions = objective.predict(objective.forward(images))
    flipped, flipped_by_noise = (1 - accuracy(objective, x, clean_predictions) for x in (adv, corner))
    assert flipped > max(0.05, 5 * flipped_by_noise)  # of the samples (classifier) or pixels (segmenter)


def test_bad_start_std_raises() -> None:
    with pytest.raises(ValueError, match="start_std"):
        KLDivergencePGD(start_std=0.0)
