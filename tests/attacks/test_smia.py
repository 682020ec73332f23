"""SMIA: reduction to BIM, the trace, effectiveness, and the stabilisation's measured effect."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from attacks.gradient import BIM
from attacks.smia import SMIA
from tests.attacks.invariants import accuracy, assert_invariants
from tests.attacks.toys import blob_images

EPS = 8 / 255



def task(request, name: str, batch: tuple[Tensor, Tensor, Tensor]):
    images, labels, masks = batch
    return request.getfixturevalue(name), images, labels if name == "toy_classifier" else masks



def jaccard(objective, images: Tensor, masks: Tensor) -> float:
    with torch.no_grad():
        predicted = objective.predict(objective.forward(images)) == 1
    truth = masks == 1
    return ((predicted & truth).sum() / (predicted | truth).sum()).item()


@pytest.mark.parametrize("objective_name", ["toy_classifier", "toy_segmenter"])
@pytest.mark.parametrize(("norm", "eps"), [("linf", EPS), ("l2", 0.5)])
def test_invariants(request, toy_batch, objective_name: str, norm: str, eps: float) -> None:
    objective, images, target = task(request, objective_name, toy_batch)
    assert_invariants(SMIA(eps=eps, norm=norm), objective, images[:8], target[:8], norm=norm, eps=eps)


@pytest.mark.parametrize("objective_name", ["toy_classifier", "toy_segmenter"])
def test_zero_weight_is_the_deviation_only_bim(request, toy_batch, objective_name: str) -> None:
    objective, images, target = task(request, objective_name, toy_batch)
    smia = SMIA(eps=EPS, alpha=EPS / 10, steps=10, stabilisation_weight=0.0)(objective, images, target)
    bim = BIM(eps=EPS, alpha=EPS / 10, steps=10)(objective, images, target)
    assert torch.equal(smia.adv_images, bim.adv_images)


def test_first_iteration_is_deviation_only_and_later_ones_are_not(toy_segmenter, toy_batch) -> None:
    images, _, masks = toy_batch
    for steps, same in ((1, True), (10, False)):
        attack = SMIA(eps=EPS, alpha=EPS / 10, steps=steps, stabilisation_weight=5.0)
        smia = attack(toy_segmenter, images, masks)
        bim = BIM(eps=EPS, alpha=EPS / 10, steps=steps)(toy_segmenter, images, masks)
        assert torch.equal(smia.adv_images, bim.adv_images) is same


def test_trace_reports_variance_and_update_cosines(toy_classifier, toy_batch) -> None:
    images, labels, _ = toy_batch
    result = SMIA(eps=EPS, steps=10)(toy_classifier, images, labels)
    trace = result.trace
    perturbation = (result.adv_images - images).flatten(1)
    torch.testing.assert_close(trace.variance, perturbation.var(dim=1, unbiased=False))
    assert trace.update_cosine.shape == (len(images), 9)
    assert (trace.update_cosine.abs() <= 1 + 1e-6).all()
    assert (trace.iterations == 10).all()


def test_lowers_accuracy_and_jaccard_more_than_random_noise(toy_classifier, toy_segmenter, toy_batch) -> None:
    images, labels, masks = toy_batch
    signs = torch.randint(0, 2, images.shape, generator=torch.Generator().manual_seed(0)) * 2.0 - 1.0
    noisy = (images + EPS * signs).clamp(0, 1)
    adv = SMIA(eps=EPS)(toy_classifier, images, labels).adv_images
    assert accuracy(toy_classifier, images, labels) == 1.0
    assert accuracy(toy_classifier, adv, labels) <= 0.1
    assert accuracy(toy_classifier, noisy, labels) >= 0.9
    adv = SMIA(eps=EPS)(toy_segmenter, images, masks).adv_images
    clean = jaccard(toy_segmenter, images, masks)
    assert clean > 0.9
    assert jaccard(toy_segmenter, adv, masks) < clean - 0.3
    assert jaccard(toy_segmenter, noisy, masks) > clean - 0.1


def test_stabilisation_makes_segmentation_updates_more_consistent(toy_segmenter) -> None:
    """Qi et al. Table 1: DEV + STA updates are more consistent (Cos) than DEV alone. On the toy
    segmenter the mean cosine rises slightly (by 0.004-0.009 over 3 batches and 4 budgets); the final
    perturbation variance, the paper's Var, does not fall (sign steps fill the box).

    The rise is about the size of the spread between images, so it is checked on 128 held-out images
    as a paired mean difference of more than two standard errors (6-10 over thread counts and
    rounding-level changes of the segmenter's initial weights, 2.5-17 with other initialisations; on
    the 32 images of ``toy_batch`` it was 0.3-8.6)."""
    images, _, masks = blob_images(128, torch.Generator().manual_seed(124))
    dev = SMIA(eps=EPS, stabilisation_weight=0.0)(toy_segmenter, images, masks).trace
    sta = SMIA(eps=EPS, stabilisation_weight=1.0)(toy_segmenter, images, masks).trace
    rise = sta.update_cosine.mean(dim=1) - dev.update_cosine.mean(dim=1)
    assert rise.mean() > 2 * rise.std() / len(rise) ** 0.5


@pytest.mark.parametrize(
    ("kwargs", "argument"),
    [
        (dict(stabilisation_weight=-1.0), "stabilisation_weight"),
        (dict(kernel_size=4), "kernel_size"),
        (dict(eps=-0.1), "eps"),
        (dict(norm="l1"), "norm"),
    ],
)
def test_bad_arguments_raise_naming_them(kwargs, argument: str) -> None:
    with pytest.raises(ValueError, match=argument):
        SMIA(**kwargs)
