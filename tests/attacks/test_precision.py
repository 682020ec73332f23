"""Mixed-precision objectives: attacks keep fp32 perturbations and exact budgets, gradients come back fp32,
fp16 loss scaling recovers input gradients that underflow, and bf16 robust accuracy matches fp32."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from attacks.apgd import APGD
from attacks.base import input_gradient
from attacks.gradient import PGD
from attacks.precision import PRECISIONS, MixedPrecisionObjective, with_precision
from lightning_modules.objectives import ClassificationObjective
from tests.attacks.invariants import assert_independent_with_ids, assert_invariants
from tests.attacks.toys import blob_images

EPS = 4 / 255
FP32_ROUNDING = 2.0**-23  # one fp32 ulp at 1: the rounding of clean + delta, as in the fp32 attacks


def fp16_autocast_on_cpu() -> bool:
    try:
        with torch.autocast("cpu", dtype=torch.float16):
            return nn.functional.linear(torch.ones(1, 2), torch.ones(2, 2)).dtype == torch.float16
    except RuntimeError:
        return False


MIXED = [
    "bf16-mixed",
    pytest.param("16-mixed", marks=pytest.mark.skipif(not fp16_autocast_on_cpu(), reason="no fp16 autocast on CPU")),
]


def test_bad_precisions_are_refused_naming_the_argument(toy_classifier):
    with pytest.raises(ValueError, match="precision must be one of .* got 'fp16'"):
        with_precision(toy_classifier, "fp16")
    with pytest.raises(ValueError, match="precision must be a mixed precision .* got '32'"):
        MixedPrecisionObjective(toy_classifier, "32")
    assert with_precision(toy_classifier, "32") is toy_classifier
    assert set(PRECISIONS) == {"32", "bf16-mixed", "16-mixed"}


@pytest.mark.parametrize("precision", MIXED)
def test_attacks_in_mixed_precision_keep_every_rule_and_an_exact_budget(toy_classifier, toy_segmenter, precision):
    images, labels, masks = blob_images(12, torch.Generator().manual_seed(3))
    for objective, target in ((toy_classifier, labels), (toy_segmenter, masks)):
        wrapped = MixedPrecisionObjective(objective, precision)
        for attack in (PGD(eps=EPS, steps=5, random_start=True), APGD(eps=EPS, steps=5)):
            result = assert_invariants(attack, wrapped, images, target, "linf", EPS, batch_independent=False)
            assert_independent_with_ids(attack, wrapped, images, target)
            assert result.adv_images.dtype == torch.float32
            linf = (result.adv_images - images).abs().amax()
            assert EPS - 1e-3 < linf <= EPS + FP32_ROUNDING, f"{attack.name}: the budget is not spent exactly"


@pytest.mark.parametrize("precision", MIXED)
def test_outputs_and_input_gradients_are_fp32_and_close_to_fp32_ones(toy_classifier, precision):
    images, labels, _ = blob_images(16, torch.Generator().manual_seed(4))
    wrapped = MixedPrecisionObjective(toy_classifier, precision)
    with torch.no_grad():
        reference, outputs = toy_classifier.forward(images), wrapped.forward(images)
    assert outputs.dtype == torch.float32
    assert 0 < (outputs - reference).abs().max() <= 0.05 * reference.abs().max()  # autocast ran, and rounded
    exact, _ = input_gradient(toy_classifier, images, labels)
    gradient, loss = input_gradient(wrapped, images, labels)
    assert gradient.dtype == loss.dtype == torch.float32
    assert F.cosine_similarity(gradient.flatten(1), exact.flatten(1)).min() > 0.95


@pytest.mark.skipif(not fp16_autocast_on_cpu(), reason="no fp16 autocast on CPU")
def test_fp16_scaling_recovers_input_gradients_that_underflow(toy_classifier):
    """The toy classifier is confident: its fp32 input gradients (largest entry 3e-8 to 5e-5 per sample)
    vanish in a plain fp16 backward, and come back with per-sample scaling."""
    images, labels, _ = blob_images(32, torch.Generator().manual_seed(5))
    exact, _ = input_gradient(toy_classifier, images, labels)
    with torch.autocast("cpu", dtype=torch.float16):
        unscaled, _ = input_gradient(toy_classifier, images, labels)
    assert (unscaled.flatten(1).abs().amax(dim=1) == 0).float().mean() > 0.9
    wrapped = MixedPrecisionObjective(toy_classifier, "16-mixed")
    scaled, _ = input_gradient(wrapped, images, labels)
    assert F.cosine_similarity(scaled.flatten(1), exact.flatten(1)).min() > 0.99 and wrapped.overflows == 0
    assert torch.allclose(scaled.abs().flatten(1).amax(dim=1), exact.abs().flatten(1).amax(dim=1), rtol=0.05)


class _AmplifyFirstSample(torch.autograd.Function):
    """Identity forward; backward multiplies sample 0's gradient by 2**20, beyond fp16's range (65504)."""

    @staticmethod
    def forward(ctx, tensor: Tensor) -> Tensor:
        return tensor.view_as(tensor)

    @staticmethod
    def backward(ctx, gradient: Tensor) -> Tensor:
        factors = torch.ones(len(gradient), dtype=gradient.dtype, device=gradient.device)
        factors[0] = 2.0**20
        return gradient * factors.view(-1, 1, 1, 1)


class AmplifiedObjective(ClassificationObjective):
    """A classifier whose backward overflows in fp16 for sample 0 only, after its first convolution."""

    def forward(self, images: Tensor) -> Tensor:
        first, *rest = self.model
        return nn.Sequential(*rest)(_AmplifyFirstSample.apply(first(images)))


@pytest.mark.skipif(not fp16_autocast_on_cpu(), reason="no fp16 autocast on CPU")
def test_a_sample_whose_fp16_gradient_overflows_gets_no_step_and_the_others_are_unaffected(toy_classifier):
    images, labels, _ = blob_images(6, torch.Generator().manual_seed(6))
    objective = AmplifiedObjective(toy_classifier.model)
    wrapped = MixedPrecisionObjective(objective, "16-mixed")
    gradient, _ = input_gradient(wrapped, images, labels)
    assert (gradient[0] == 0).all() and wrapped.overflows == 1
    alone, _ = input_gradient(MixedPrecisionObjective(toy_classifier, "16-mixed"), images[1:], labels[1:])
    assert torch.equal(gradient[1:], alone)
    adv = PGD(eps=EPS, steps=3, random_start=False)(wrapped, images, labels).adv_images
    assert torch.equal(adv[0], images[0]) and (adv[1:] != images[1:]).any()
    assert wrapped.overflows == 4


@dataclasses.dataclass
class Boxes:
    scores: Tensor
    labels: Tensor
    sizes: list[tuple[int, int]]


class BoxObjective:
    """A detector-like objective whose outputs are a dataclass holding a dict, a list and an int tensor."""

    def __init__(self) -> None:
        self.model = nn.Conv2d(3, 2, 3)

    def forward(self, images: Tensor) -> Boxes:
        scores = self.model(images).mean(dim=(2, 3))
        return Boxes({"scores": scores}, scores.argmax(dim=1), [tuple(images.shape[2:])])


def test_nested_outputs_come_back_fp32_with_integers_untouched():
    outputs = MixedPrecisionObjective(BoxObjective()).forward(torch.rand(2, 3, 8, 8))
    assert outputs.scores["scores"].dtype == torch.float32 and outputs.labels.dtype == torch.int64
    assert outputs.sizes == [(8, 8)]


@pytest.mark.slow
def test_bf16_robust_accuracy_is_within_one_point_of_fp32_on_the_toy_classifier(toy_classifier):
    """200 held-out images at 4.5/255, where PGD-10 leaves about half correct (measured: fp32 0.565, bf16 0.560
    with 99.5% of the samples' outcomes equal)."""
    images, labels, _ = blob_images(200, torch.Generator().manual_seed(7))
    ids = [f"blob-{i}" for i in range(len(images))]
    attack = PGD(eps=4.5 / 255, steps=10, random_start=True)
    correct = {}
    for precision in ("32", "bf16-mixed"):
        adv = attack(with_precision(toy_classifier, precision), images, labels, ids=ids).adv_images
        with torch.no_grad():
            correct[precision] = toy_classifier.predict(toy_classifier.forward(adv)) == labels
    fp32, bf16 = (correct[p].float().mean().item() for p in ("32", "bf16-mixed"))
    assert 0.3 < fp32 < 0.8, "the budget should leave the test in the range where precision could matter"
    assert abs(bf16 - fp32) <= 0.01
    assert (correct["32"] == correct["bf16-mixed"]).float().mean() >= 0.97


@pytest.mark.slow
def test_bf16_pgd_on_the_trained_classifier_matches_fp32(fitted_classifier):
    """The fitted resnet18 on 20 held-out fundus images at 1/255 (bf16 on a CPU without bf16 units is ~15x
    slower than fp32, hence the small set): robust accuracies within one image (measured equal, 0.25 of 40)."""
    module, datamodule = fitted_classifier
    datamodule.setup("test")
    batch = next(iter(datamodule.test_dataloader()))
    images, labels, ids = batch["image"][:20], batch["target"][:20], batch["id"][:20]
    objective = module.objective()
    attack = PGD(eps=1 / 255, steps=5, random_start=True)
    accuracy = {}
    for precision in ("32", "bf16-mixed"):
        adv = attack(with_precision(objective, precision), images, labels, ids=ids).adv_images
        with torch.no_grad():
            accuracy[precision] = (objective.predict(objective.forward(adv)) == labels).float().mean().item()
    with torch.no_grad():
        clean = (objective.predict(objective.forward(images)) == labels).float().mean().item()
    assert accuracy["32"] < clean, "PGD at 1/255 should hurt the trained classifier"
    assert abs(accuracy["bf16-mixed"] - accuracy["32"]) <= 1 / 20 + 1e-6


@pytest.mark.gpu
@pytest.mark.parametrize("precision", ["bf16-mixed", "16-mixed"])
def test_mixed_precision_on_cuda_keeps_every_rule_and_agrees_with_fp32(toy_classifier, precision):
    objective = ClassificationObjective(copy.deepcopy(toy_classifier.model).cuda())
    images, labels, _ = blob_images(200, torch.Generator().manual_seed(7))
    images, labels = images.cuda(), labels.cuda()
    wrapped = MixedPrecisionObjective(objective, precision)
    eps = 4.5 / 255
    attack = PGD(eps=eps, steps=10, random_start=True)
    with torch.backends.cudnn.flags(enabled=True, benchmark=False, deterministic=True):  # a repeat must be equal
        result = assert_invariants(attack, wrapped, images[:12], labels[:12], "linf", eps, batch_independent=False)
    assert result.adv_images.dtype == torch.float32 and result.adv_images.is_cuda
    ids = [f"blob-{i}" for i in range(len(images))]
    correct = {}
    for name, candidate in (("32", objective), (precision, wrapped)):
        adv = attack(candidate, images, labels, ids=ids).adv_images
        with torch.no_grad():
            correct[name] = (objective.predict(objective.forward(adv)) == labels).float().mean().item()
    assert abs(correct[precision] - correct["32"]) <= 0.02, correct
