"""FAB and FAB-T: invariants, the box-constrained projections in closed form and against AutoAttack's, FAB's exact
first step on affine classifiers, AutoAttack's eps rule, and agreement with AutoAttack's FAB."""

import contextlib
import copy
import importlib
import math
import time

import pytest
import torch
from torch import nn

from attacks.deepfool import DeepFool
from attacks.fab import FAB, HYPERPLANE_STEPS, FABTargeted
from attacks.fmn import FMN
from lightning_modules.objectives import ClassificationObjective
from tests.attacks.invariants import assert_independent_with_ids, assert_invariants
from tests.attacks.minimal_norm import DUAL, P, predictions, sizes
from tests.attacks.toys import blob_images


@pytest.mark.parametrize("norm", sorted(P))
def test_invariants(norm, toy_classifier, toy_batch):
    images, labels, _ = toy_batch
    budget = None if norm == "l1" else norm
    eps = {"l1": 3.0, "l2": 0.3, "linf": 4 / 255}[norm]
    assert_invariants(FAB(norm=norm, steps=20), toy_classifier, images, labels, None, None)
    assert_invariants(FAB(eps=eps, norm=norm, steps=20), toy_classifier, images, labels, budget, eps)
    assert_invariants(FABTargeted(eps=eps, norm=norm, steps=10), toy_classifier, images, labels, budget, eps)


def test_restarts_draw_per_sample_with_ids(toy_classifier, toy_batch):
    images, labels, _ = toy_batch
    assert_independent_with_ids(FAB(norm="l2", steps=10, n_restarts=2), toy_classifier, images, labels)


@pytest.mark.parametrize("attack", [FAB, FABTargeted])
@pytest.mark.parametrize("norm", sorted(P))
def test_adversarials_are_misclassified_and_their_norms_reported(attack, norm, toy_classifier, toy_batch):
    images, labels, _ = toy_batch
    result = attack(norm=norm, steps=50)(toy_classifier, images, labels)
    norms = result.extras["norms"]
    fooled = torch.isfinite(norms)
    assert norms.shape == (len(images),) and fooled.float().mean() >= 0.95
    assert (predictions(toy_classifier, result.adv_images)[fooled] != labels[fooled]).all()
    torch.testing.assert_close(sizes(result.adv_images, images, norm)[fooled], norms[fooled])
    assert torch.equal(result.adv_images[~fooled], images[~fooled])


def test_projections_closed_form():
    """On <w, delta> = 1 with w = (2, 1, 0.5) from t = (0.5, 0.5, 0.9) (room 0.5, 0.5, 0.1 along w): Linf moves all
    by rho until the third stops at 0.1 (3 rho + 0.05 = 1); L2 moves by min(lambda w_i, room_i) (5.25 lambda = 1);
    L1 fills the largest |w_i| first. Out of reach (<w, delta> = 10) every norm returns the box corner."""
    points = torch.tensor([[0.5, 0.5, 0.9]])
    normal = torch.tensor([[2.0, 1.0, 0.5]])
    rho, lam = 0.95 / 3, 1 / 5.25
    expected = {"linf": [rho, rho, 0.1], "l2": [2 * lam, lam, 0.5 * lam], "l1": [0.5, 0.0, 0.0]}
    for norm, delta in expected.items():
        step = HYPERPLANE_STEPS[norm](points, normal, torch.tensor([1.0]))
        torch.testing.assert_close(step, torch.tensor([delta]))
        torch.testing.assert_close(HYPERPLANE_STEPS[norm](points, normal, torch.tensor([10.0])),
                                   torch.tensor([[0.5, 0.5, 0.1]]))
        torch.testing.assert_close(HYPERPLANE_STEPS[norm](points, -normal, torch.tensor([-1.0])), step)


@pytest.mark.parametrize("norm", sorted(P))
def test_projections_agree_with_autoattack(norm):
    """The same minimal norm as AutoAttack's fab_projections (some hyperplanes out of the box's reach), on the
    hyperplane where it is reachable, inside the box always; coordinates with w_i = 0 never move."""
    projections = autoattack("fab_projections")
    torch.manual_seed(0)
    points, normal = torch.rand(200, 300), torch.randn(200, 300)
    normal[:, :30] = 0
    shift = normal.abs().sum(dim=1) * torch.rand(200) * torch.randn(200).sign()  # the box reaches about half of it
    offset = torch.linalg.vecdot(normal, points) + shift
    ours = HYPERPLANE_STEPS[norm](points, normal, shift)
    theirs = getattr(projections, f"projection_{norm}")(points, normal, offset)
    reached = (torch.linalg.vecdot(normal, points + theirs) - offset).abs() < 1e-4
    assert 0 < reached.sum() < len(points)
    torch.testing.assert_close(ours.norm(p=P[norm], dim=1), theirs.norm(p=P[norm], dim=1), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(torch.linalg.vecdot(normal, points + ours)[reached], offset[reached], rtol=0, atol=1e-4)
    assert (points + ours).min() >= 0 and (points + ours).max() <= 1 and (ours[:, :30] == 0).all()


@pytest.mark.parametrize("norm", sorted(P))
def test_affine_classifier_closed_form(norm):
    """For two classes f = W x + b the closest boundary is exact: from x_orig both projections are the minimal
    perturbation delta* (|f_1 - f_0| / ||w_1 - w_0||_q along the dual direction), so the first step lands on
    x_orig + eta delta*; the backward steps then close in on ||delta*||_p from above."""
    torch.manual_seed(0)
    linear = nn.Linear(3 * 4 * 4, 2)
    objective = ClassificationObjective(nn.Sequential(nn.Flatten(), linear))
    images = 0.5 + 0.05 * torch.randn(8, 3, 4, 4)
    with torch.no_grad():
        normal = linear.weight[1] - linear.weight[0]
        linear.bias[1] = linear.bias[0] - 0.5 * normal.sum()  # the boundary passes through the grey image
        logits = objective.forward(images)
    gap = logits[:, 0] - logits[:, 1]  # > 0 towards class 1
    direction = {"l2": normal / normal.norm(), "linf": normal.sign(),
                 "l1": torch.zeros_like(normal).index_fill_(0, normal.abs().argmax(), 1) * normal.sign()}[norm]
    distance = gap.abs() / normal.norm(p=DUAL[norm])
    delta = (gap.sign() * distance).unsqueeze(1) * direction
    assert distance.max() < 0.4  # the minimal perturbation stays inside the box
    labels = logits.argmax(dim=1)
    first = FAB(norm=norm, steps=1)(objective, images, labels)
    torch.testing.assert_close(first.adv_images, images + 1.05 * delta.view_as(images), rtol=0, atol=1e-5)
    torch.testing.assert_close(first.extras["norms"], 1.05 * distance, rtol=1e-4, atol=0)
    norms = FAB(norm=norm)(objective, images, labels).extras["norms"]
    assert (norms >= distance * (1 - 1e-4)).all() and (norms <= 1.01 * distance).all()


def test_eps_keeps_only_adversarials_within_it(toy_classifier, toy_batch):
    """With one run from the clean image eps only selects: the minimal-norm result where its norm is <= eps, the
    clean image (norm inf) elsewhere, as AutoAttack's FAB returns."""
    images, labels, _ = toy_batch
    free = FAB(steps=30)(toy_classifier, images, labels)
    eps = free.extras["norms"].median().item()
    bounded = FAB(eps=eps, steps=30)(toy_classifier, images, labels)
    within = free.extras["norms"] <= eps
    assert 0 < within.sum() < len(images)
    assert torch.equal(bounded.extras["norms"], torch.where(within, free.extras["norms"], math.inf))
    assert torch.equal(bounded.adv_images, torch.where(within.view(-1, 1, 1, 1), free.adv_images, images))


def test_targeted_runs_each_top_class_and_keeps_the_smallest(toy_classifier, toy_batch):
    """FAB-T tries min(n_target_classes, K - 1) = 3 targets on the 4-class toy: every correct sample gets 3 runs,
    and more targets only lower a norm (eps None keeps the smallest); with eps a sample stops at its first."""
    images, labels, _ = toy_batch
    three = FABTargeted(steps=10)(toy_classifier, images, labels)
    one = FABTargeted(steps=10, n_target_classes=1)(toy_classifier, images, labels)
    assert (three.trace.iterations == 30).all() and (one.trace.iterations == 10).all()
    assert (three.extras["norms"] <= one.extras["norms"]).all()
    assert (three.extras["norms"] < one.extras["norms"]).any()
    bounded = FABTargeted(eps=1.0, norm="l2", steps=10)(toy_classifier, images, labels)
    assert torch.isfinite(bounded.extras["norms"]).all() and (bounded.trace.iterations == 10).all()


def test_restarts_only_lower_the_norm(toy_classifier, toy_batch):
    """Restarts start at half the best norm found, in a random direction; eps None keeps the smallest norm."""
    images, labels, _ = toy_batch
    once = FAB(norm="l2", steps=20)(toy_classifier, images, labels).extras["norms"]
    thrice = FAB(norm="l2", steps=20, n_restarts=3)(toy_classifier, images, labels).extras["norms"]
    assert (thrice <= once).all() and (thrice < once).any()


def test_l2_close_to_deepfool_and_fmn(toy_classifier, toy_batch):
    images, labels, _ = toy_batch
    fab = FAB(norm="l2")(toy_classifier, images, labels).extras["norms"]
    deepfool = sizes(DeepFool()(toy_classifier, images, labels).adv_images, images, "l2")
    fmn = FMN(norm="l2")(toy_classifier, images, labels).extras["norms"]
    assert torch.isfinite(fab).all()
    assert abs(fab.median() / deepfool.median() - 1) <= 0.1 and abs(fab.median() / fmn.median() - 1) <= 0.1


def test_misclassified_left_unchanged_with_norm_zero():
    torch.manual_seed(0)
    objective = ClassificationObjective(nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, 3)))
    images = torch.rand(16, 3, 4, 4)
    predicted = predictions(objective, images)
    labels = torch.where(torch.arange(16) % 2 == 0, predicted, (predicted + 1) % 3)
    wrong = predicted != labels
    for attack in (FAB(steps=10), FABTargeted(eps=0.1, steps=10, n_restarts=2)):
        result = attack(objective, images, labels)
        assert torch.equal(result.adv_images[wrong], images[wrong])
        assert (result.extras["norms"][wrong] == 0).all() and (result.trace.iterations[wrong] == 0).all()
        assert (result.extras["norms"][~wrong] > 0).all()


def test_dense_logits_raise(toy_segmenter, toy_batch):
    images, _, masks = toy_batch
    with pytest.raises(ValueError, match="classification logits"):
        FAB(steps=2)(toy_segmenter, images, masks)


def test_settings_record_the_budget_and_targets():
    assert FAB().settings == {"eps": None, "norm": "linf", "steps": 100, "n_restarts": 1, "alpha_max": 0.1,
                              "eta": 1.05, "beta": 0.9, "seed": 0}
    assert FABTargeted(eps=8 / 255).settings["n_target_classes"] == 9
    assert FABTargeted(eps=8 / 255).settings["eps"] == 8 / 255


@pytest.mark.parametrize(
    ("settings", "argument"),
    [({"eps": 0.0}, "eps"), ({"norm": "l0"}, "norm"), ({"steps": 0}, "steps"), ({"n_restarts": 0}, "n_restarts"),
     ({"alpha_max": 1.5}, "alpha_max"), ({"eta": 0.9}, "eta"), ({"beta": 0.0}, "beta")],
)
def test_invalid_arguments_raise(settings, argument):
    with pytest.raises(ValueError, match=argument):
        FAB(**settings)
    with pytest.raises(ValueError, match="n_target_classes"):
        FABTargeted(n_target_classes=0)


def autoattack(module):
    """AutoAttack's ``module``, from the pip package pyautoattack==0.2.0 or the GitHub install ``autoattack``."""
    for package in ("pyautoattack", "autoattack"):
        with contextlib.suppress(ImportError):
            return importlib.import_module(f"{package}.{module}")
    pytest.skip("needs AutoAttack: pip install --no-deps pyautoattack==0.2.0")


def timed(run):
    start = time.perf_counter()
    value = run()
    return value, time.perf_counter() - start


@pytest.fixture(scope="module")
def held_out(toy_classifier):
    """128 held-out toy images, and a copy of the toy network for AutoAttack's code, whose backward passes would
    leave gradients on the shared fixture's parameters."""
    images, labels, _ = blob_images(128, torch.Generator().manual_seed(7))
    return images, labels, copy.deepcopy(toy_classifier.model).requires_grad_(False)


@pytest.mark.slow
@pytest.mark.parametrize("eps", [2 / 255, 4 / 255, 8 / 255])
def test_fab_t_robust_accuracy_agrees_with_autoattack(eps, toy_classifier, held_out):
    """FAB-T Linf (3 targets, 100 steps, 1 restart) leaves the robust accuracy of AutoAttack's FAB-T within 1 point."""
    fab_pt = autoattack("fab_pt")
    images, labels, network = held_out
    ours, ours_seconds = timed(lambda: FABTargeted(eps=eps, n_target_classes=3)(toy_classifier, images, labels))
    reference = fab_pt.FABAttack_PT(network, norm="Linf", n_restarts=1, n_iter=100, eps=eps, targeted=True,
                                    n_target_classes=3, seed=0, device="cpu")
    theirs, reference_seconds = timed(lambda: reference.perturb(images, labels))
    accuracy = [(predictions(toy_classifier, adv) == labels).float().mean().item() for adv in (ours.adv_images, theirs)]
    print(f"\nFAB-T Linf eps {eps * 255:.0f}/255: robust accuracy ours {accuracy[0]:.4f} ({ours_seconds:.1f} s), "
          f"AutoAttack {accuracy[1]:.4f} ({reference_seconds:.1f} s)")
    assert abs(accuracy[0] - accuracy[1]) <= 0.01


@pytest.mark.slow
def test_fab_l2_median_norm_agrees_with_autoattack(toy_classifier, held_out):
    """Untargeted FAB-L2 (100 steps, 1 restart): median minimal norm within 5% of AutoAttack's FAB, run with an eps
    too large to reject any adversarial."""
    fab_pt = autoattack("fab_pt")
    images, labels, network = held_out
    ours, ours_seconds = timed(lambda: FAB(norm="l2")(toy_classifier, images, labels).extras["norms"])
    reference = fab_pt.FABAttack_PT(network, norm="L2", n_restarts=1, n_iter=100, eps=1e6, seed=0, device="cpu")
    adv, reference_seconds = timed(lambda: reference.perturb(images, labels))
    theirs = torch.where(predictions(toy_classifier, adv) != labels, sizes(adv, images, "l2"), math.inf)
    print(f"\nFAB L2: median norm ours {ours.median():.5f} ({ours_seconds:.1f} s), "
          f"AutoAttack {theirs.median():.5f} ({reference_seconds:.1f} s)")
    assert torch.isfinite(ours).float().mean() >= torch.isfinite(theirs).float().mean()
    assert abs(ours.median() / theirs.median() - 1) <= 0.05
