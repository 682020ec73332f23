"""FMN: invariants, exact minimal norms on affine classifiers, the L1 projection, the robust-accuracy curve, and
agreement with adv-lib's reference implementation."""

import importlib.util
import math
import time
from pathlib import Path

import pytest
import torch
from torch import nn

from attacks.cw import CWL2
from attacks.deepfool import DeepFool
from attacks.fmn import FMN, project_l1_ball, robust_accuracy_curve
from lightning_modules.objectives import ClassificationObjective
from tests.attacks.invariants import assert_invariants
from tests.attacks.minimal_norm import DUAL, P, predictions, sizes
from tests.attacks.toys import blob_images


@pytest.mark.parametrize("norm", sorted(P))
def test_invariants(norm, toy_classifier, toy_batch):
    images, labels, _ = toy_batch
    assert_invariants(FMN(norm=norm, steps=20), toy_classifier, images, labels, None, None)


@pytest.mark.parametrize("norm", sorted(P))
def test_adversarials_are_misclassified_and_their_norms_reported(norm, toy_classifier, toy_batch):
    images, labels, _ = toy_batch
    result = FMN(norm=norm, steps=50)(toy_classifier, images, labels)
    norms = result.extras["norms"]
    fooled = torch.isfinite(norms)
    assert norms.shape == (len(images),) and fooled.float().mean() >= 0.95
    assert (predictions(toy_classifier, result.adv_images)[fooled] != labels[fooled]).all()
    torch.testing.assert_close(sizes(result.adv_images, images, norm)[fooled], norms[fooled])
    assert torch.equal(result.adv_images[~fooled], images[~fooled])


@pytest.mark.parametrize("norm", sorted(P))
def test_affine_classifier_closed_form(norm):
    """For two classes f(x) = W x + b the minimal Lp perturbation is |f_1 - f_0| / ||w_1 - w_0||_q (q the dual
    exponent), reached inside the [0, 1] box for images near 0.5. The first step's linear estimate is then exact, so
    an iterate can stay on the boundary's clean side by rounding and never count as fooled (adv-lib's fmn too)."""
    torch.manual_seed(0)
    linear = nn.Linear(3 * 4 * 4, 2)
    objective = ClassificationObjective(nn.Sequential(nn.Flatten(), linear))
    images = 0.5 + 0.05 * torch.randn(8, 3, 4, 4)
    with torch.no_grad():
        normal = linear.weight[1] - linear.weight[0]
        linear.bias[1] = linear.bias[0] - 0.5 * normal.sum()  # the boundary passes through the grey image
        logits = objective.forward(images)
        distance = (logits[:, 1] - logits[:, 0]).abs() / normal.norm(p=DUAL[norm])
    assert distance.max() < 0.4  # the minimal perturbation stays inside the box
    result = FMN(norm=norm)(objective, images, logits.argmax(dim=1))
    norms = result.extras["norms"]
    fooled = torch.isfinite(norms)
    assert fooled.float().mean() >= 0.75
    torch.testing.assert_close(norms[fooled], distance[fooled], rtol=0.03, atol=0)


def test_l2_no_larger_than_deepfool_and_cw(toy_classifier, toy_batch):
    images, labels, _ = toy_batch
    fmn = FMN(norm="l2")(toy_classifier, images, labels).extras["norms"]
    deepfool = sizes(DeepFool()(toy_classifier, images, labels).adv_images, images, "l2")
    cw = sizes(CWL2(initial_const=1.0, binary_search_steps=3, steps=50)(toy_classifier, images, labels).adv_images,
               images, "l2")
    assert torch.isfinite(fmn).all()
    assert fmn.median() <= 1.1 * deepfool.median()
    assert 0.5 * cw.median() <= fmn.median() <= 1.1 * cw.median()


def test_misclassified_left_unchanged_with_norm_zero_and_unfooled_with_inf():
    """Wrong clean predictions come back bit-identical with norm 0 and no iterations (never repaired); with a
    single step (which only evaluates the clean image) every correct sample comes back unchanged with norm inf."""
    torch.manual_seed(0)
    objective = ClassificationObjective(nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, 3)))
    images = torch.rand(16, 3, 4, 4)
    predicted = predictions(objective, images)
    labels = torch.where(torch.arange(16) % 2 == 0, predicted, (predicted + 1) % 3)
    wrong = predicted != labels
    result = FMN(steps=30)(objective, images, labels)
    assert torch.equal(result.adv_images[wrong], images[wrong])
    assert (result.extras["norms"][wrong] == 0).all() and (result.trace.iterations[wrong] == 0).all()
    assert (result.extras["norms"][~wrong] > 0).all() and (result.trace.iterations[~wrong] == 30).all()
    single = FMN(steps=1)(objective, images, labels)
    assert torch.equal(single.adv_images, images)
    assert torch.equal(single.extras["norms"], torch.where(wrong, 0.0, math.inf))


def test_targeted_reaches_the_goal(toy_classifier, toy_batch):
    images, labels, _ = toy_batch
    goal = (labels + 1) % 4
    result = FMN(steps=50, target_mode="given")(toy_classifier, images, goal)
    fooled = torch.isfinite(result.extras["norms"])
    assert fooled.float().mean() >= 0.9
    assert (predictions(toy_classifier, result.adv_images)[fooled] == goal[fooled]).all()


def test_l1_projection_closed_form():
    """Duchi et al. 2008: [3, 1, -2] onto the radius-2 ball is [1.5, 0, -0.5] (theta 1.5); inside stays put."""
    delta = torch.tensor([[3.0, 1.0, -2.0], [0.1, -0.2, 0.3], [1.0, -1.0, 0.5]])
    radius = torch.tensor([2.0, 1.0, 0.0])
    expected = torch.tensor([[1.5, 0.0, -0.5], [0.1, -0.2, 0.3], [0.0, 0.0, 0.0]])
    torch.testing.assert_close(project_l1_ball(delta, radius), expected)
    far = torch.randn(5, 3, 8, 8)
    torch.testing.assert_close(project_l1_ball(far, torch.ones(5)).flatten(1).abs().sum(dim=1), torch.ones(5))


def test_robust_accuracy_curve_closed_form():
    norms = torch.tensor([0.0, 0.1, 0.5, math.inf])
    curve = robust_accuracy_curve(norms, [0.0, 0.1, 0.3, 1.0])
    torch.testing.assert_close(curve, torch.tensor([0.75, 0.5, 0.5, 0.25]))


def test_dense_logits_raise(toy_segmenter, toy_batch):
    images, _, masks = toy_batch
    with pytest.raises(ValueError, match="classification logits"):
        FMN(steps=2)(toy_segmenter, images, masks)


def test_default_final_step_is_a_hundredth_of_the_first():
    assert FMN(alpha_init=2.0).settings["alpha_final"] == 0.02 and FMN(alpha_final=0.5).alpha_final == 0.5


@pytest.mark.parametrize(
    ("settings", "argument"),
    [({"norm": "l0"}, "norm"), ({"steps": 0}, "steps"), ({"alpha_init": 0.0}, "alpha_init"),
     ({"gamma_init": 1.0}, "gamma_init"), ({"gamma_final": -0.1}, "gamma_final")],
)
def test_invalid_arguments_raise(settings, argument):
    with pytest.raises(ValueError, match=argument):
        FMN(**settings)


def reference_fmn():
    """adv-lib's ``fmn``, loaded from its module file: ``adv_lib.attacks``' package import needs visdom, which
    its other attacks' loggers use and ``fmn`` does not."""
    adv_lib = pytest.importorskip("adv_lib", reason="adv-lib==0.2.8 is in the peers extra")
    path = Path(adv_lib.__file__).parent / "attacks" / "fast_minimum_norm.py"
    spec = importlib.util.spec_from_file_location("adv_lib_fast_minimum_norm", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.fmn


@pytest.mark.slow
@pytest.mark.parametrize("norm", ["l2", "linf"])
def test_agrees_with_adv_lib(norm, toy_classifier):
    """Median minimal norm over 128 held-out toy images within 5% of adv-lib's fmn with the same 100 steps."""
    reference = reference_fmn()
    images, labels, _ = blob_images(128, torch.Generator().manual_seed(7))
    start = time.perf_counter()
    ours = FMN(norm=norm, steps=100)(toy_classifier, images, labels).extras["norms"]
    ours_seconds = time.perf_counter() - start
    start = time.perf_counter()
    adv = reference(toy_classifier.model, images, labels, norm=P[norm], steps=100)
    reference_seconds = time.perf_counter() - start
    theirs = torch.where(predictions(toy_classifier, adv) != labels, sizes(adv, images, norm), math.inf)
    print(f"\nFMN-{norm}: ours median {ours.median():.5f} ({ours_seconds:.1f} s), "
          f"adv-lib median {theirs.median():.5f} ({reference_seconds:.1f} s)")
    assert torch.isfinite(ours).float().mean() >= torch.isfinite(theirs).float().mean()
    assert abs(ours.median() / theirs.median() - 1) <= 0.05
