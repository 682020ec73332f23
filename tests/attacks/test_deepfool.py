"""DeepFool: exact on affine classifiers, minimal-L2 on the toy model, early stop per sample."""

import pytest
import torch
from torch import nn

from attacks.deepfool import BOUNDARY_NUDGE, DeepFool
from attacks.gradient import PGD
from lightning_modules.objectives import ClassificationObjective
from tests.attacks.invariants import assert_invariants


def success_and_sizes(objective, images, labels, adv):
    with torch.no_grad():
        fooled = objective.predict(objective.forward(adv)) != labels
    return fooled, (adv - images).flatten(1).norm(dim=1)


def test_invariants(toy_classifier, toy_batch):
    images, labels, _ = toy_batch
    assert_invariants(DeepFool(), toy_classifier, images, labels, None, None)


def test_affine_classifier_closed_form():
    """For f(x) = W x + b the first step lands on the boundary: |f_1 - f_0| / ||w_1 - w_0|| (+ nudge)."""
    torch.manual_seed(0)
    linear = nn.Linear(3 * 4 * 4, 2)
    objective = ClassificationObjective(nn.Sequential(nn.Flatten(), linear))
    images = 0.5 + 0.01 * torch.randn(6, 3, 4, 4)
    with torch.no_grad():
        logits = objective.forward(images)
    original = logits.argmax(dim=1)
    other = 1 - original
    rows = torch.arange(len(images))
    direction = linear.weight[other] - linear.weight[original]
    distance = (logits[rows, other] - logits[rows, original]).abs() / direction.norm(dim=1)
    result = DeepFool(overshoot=0.02)(objective, images, original)
    delta = (result.adv_images - images).flatten(1)
    torch.testing.assert_close(delta.norm(dim=1), 1.02 * (distance + BOUNDARY_NUDGE).detach(), rtol=1e-4, atol=1e-6)
    cosine = nn.functional.cosine_similarity(delta, direction.detach(), dim=1)
    torch.testing.assert_close(cosine, torch.ones(len(images)), rtol=0, atol=1e-4)
    assert (objective.predict(objective.forward(result.adv_images)) != original).all()
    assert (result.trace.iterations == 1).all()


def test_smaller_l2_than_pgd_at_equal_success(toy_classifier, toy_batch):
    images, labels, _ = toy_batch
    fooled, sizes = success_and_sizes(
        toy_classifier, images, labels, DeepFool()(toy_classifier, images, labels).adv_images
    )
    assert fooled.float().mean() >= 0.95
    for eps in (0.25, 0.5, 0.75, 1.0, 1.5, 2.0):
        pgd = PGD(eps=eps, norm="l2", steps=10)(toy_classifier, images, labels).adv_images
        pgd_fooled, pgd_sizes = success_and_sizes(toy_classifier, images, labels, pgd)
        if pgd_fooled.float().mean() >= fooled.float().mean():
            break
    assert pgd_fooled.float().mean() >= fooled.float().mean()
    assert sizes[fooled].mean() < pgd_sizes[pgd_fooled].mean()
    noise = torch.randn(images.shape, generator=torch.Generator().manual_seed(0))
    noisy = images + noise / noise.flatten(1).norm(dim=1).view(-1, 1, 1, 1) * sizes.view(-1, 1, 1, 1)
    assert success_and_sizes(toy_classifier, images, labels, noisy.clamp(0, 1))[0].float().mean() < 0.1


def test_fooled_samples_stop_updating(toy_classifier, toy_batch):
    images, labels, _ = toy_batch
    result = DeepFool(steps=50)(toy_classifier, images, labels)
    iterations = result.trace.iterations
    assert iterations.max() < 50 and iterations.min() >= 1
    enough = DeepFool(steps=int(iterations.max()) + 1)(toy_classifier, images, labels)
    assert torch.equal(enough.adv_images, result.adv_images)
    assert torch.equal(DeepFool(steps=100)(toy_classifier, images, labels).adv_images, result.adv_images)


def test_candidate_classes_limit_the_search(toy_classifier, toy_batch):
    images, labels, _ = toy_batch
    two = DeepFool(candidates=2)(toy_classifier, images, labels).adv_images
    fooled, sizes = success_and_sizes(toy_classifier, images, labels, two)
    full_fooled, full_sizes = success_and_sizes(
        toy_classifier, images, labels, DeepFool()(toy_classifier, images, labels).adv_images
    )
    assert fooled.all() and full_fooled.all()
    assert full_sizes.mean() <= sizes.mean() + 1e-6


def test_dense_logits_raise(toy_segmenter, toy_batch):
    images, _, masks = toy_batch
    with pytest.raises(ValueError, match="classification logits"):
        DeepFool()(toy_segmenter, images, masks)


@pytest.mark.parametrize(
    ("build", "argument"),
    [
        (lambda: DeepFool(steps=0), "steps"),
        (lambda: DeepFool(overshoot=-0.1), "overshoot"),
        (lambda: DeepFool(candidates=1), "candidates"),
    ],
)
def test_invalid_arguments_raise(build, argument):
    with pytest.raises(ValueError, match=argument):
        build()


def test_misclassified_samples_are_left_unchanged_and_never_repaired():
    """An untargeted attack never pushes a wrong sample into its true class: samples the clean model
    misclassifies come back bit-identical, so accuracy can only fall (the reference implementations do
    the same)."""
    torch.manual_seed(0)
    objective = ClassificationObjective(nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, 3)))
    images = torch.rand(32, 3, 4, 4)
    with torch.no_grad():
        predicted = objective.forward(images).argmax(dim=1)
    labels = torch.where(torch.arange(32) % 2 == 0, predicted, (predicted + 1) % 3)  # half of them wrong
    adv = DeepFool()(objective, images, labels).adv_images
    wrong = predicted != labels
    assert torch.equal(adv[wrong], images[wrong])
    fooled, sizes = success_and_sizes(objective, images, labels, adv)
    assert fooled[wrong].all() and fooled[~wrong].all() and (sizes[~wrong] > 0).all()
