"""The attack boundary's input guards: images outside the project's domain and targets outside the model's
range fail at the call with one ValueError naming the argument, the sample and the value; valid edge cases
still run within budget."""

from __future__ import annotations

import copy
import re

import pytest
import torch
from torch import Tensor, nn

from attacks import FGSM, PGD, EnsembleObjective
from attacks.validation import check_images
from lightning_modules.classifier import ClassifierModule
from lightning_modules.detector import DetectorModule
from lightning_modules.objectives import ClassificationObjective, SegmentationObjective
from lightning_modules.segmenter import SegmenterModule
from tests.attacks.invariants import assert_budget, model_state

EPS = 4 / 255
DETECTION_SIZE = 64


@pytest.fixture(scope="module")
def classifier(toy_classifier) -> ClassificationObjective:
    """The trained 4-class toy classifier, its number of classes given."""
    return ClassificationObjective(toy_classifier.model, num_classes=4)


@pytest.fixture(scope="module")
def detector() -> DetectorModule:
    torch.manual_seed(0)
    size = {"min_size": DETECTION_SIZE, "max_size": DETECTION_SIZE}
    return DetectorModule(num_classes=3, proposals_per_image=20, **size).eval()


@pytest.fixture()
def batch(toy_batch) -> tuple[Tensor, Tensor]:
    images, labels, _ = toy_batch
    return images[:4], labels[:4]


def with_pixel(images: Tensor, value: float) -> Tensor:
    changed = images.clone()
    changed[1, 2, 5, 7] = value
    return changed


BAD_IMAGES = {
    "0..255": (lambda x: x * 255, "images must lie in [0, 1] (got min {low:.3f}, max {high:.3f})"),
    "[-1, 1]": (lambda x: x * 2 - 1, "images must lie in [0, 1] (got min {low:.3f}, max {high:.3f})"),
    "uint8": (lambda x: (x * 255).to(torch.uint8), r"floating-point tensor .* got torch\.uint8"),
    "bool": (lambda x: x > 0.5, r"floating-point tensor .* got torch\.bool"),
    "float64, float32 model": (lambda x: x.double(), r"images are torch\.float64 but the model's parameters"),
    "float16, float32 model": (lambda x: x.half(), r"images are torch\.float16 but the model's parameters"),
    "NaN": (lambda x: with_pixel(x, float("nan")), r"images must be finite: images\[1, 2, 5, 7\] is nan"),
    "+Inf": (lambda x: with_pixel(x, float("inf")), r"images must be finite: images\[1, 2, 5, 7\] is inf"),
    "-Inf": (lambda x: with_pixel(x, float("-inf")), r"images\[1, 2, 5, 7\] is -inf"),
    "(C, H, W)": (lambda x: x[0], r"non-empty \(B, C, H, W\) tensor, got shape \(3, 16, 16\)"),
    "5-D": (lambda x: x[None], r"got shape \(1, 4, 3, 16, 16\)"),
    "empty": (lambda x: x[:0], r"got shape \(0, 3, 16, 16\)"),
    "numpy": (lambda x: x.numpy(), r"images must be a torch\.Tensor .* got a ndarray"),
}


@pytest.mark.parametrize("case", BAD_IMAGES)
def test_images_outside_the_domain_fail_naming_images_and_leave_model_and_input_alone(classifier, batch, case):
    make, message = BAD_IMAGES[case]
    images, labels = batch
    bad = make(images)
    if "{low" in message:
        message = re.escape(message.format(low=bad.min().item(), high=bad.max().item()))
    before = torch.as_tensor(bad).clone()
    state = model_state(classifier)
    with pytest.raises(ValueError, match=message):
        PGD(eps=EPS, steps=2, random_start=True)(classifier, bad, labels)
    after = model_state(classifier)
    assert all(torch.equal(after[0][k], state[0][k]) for k in state[0]) and after[1:] == state[1:]
    torch.testing.assert_close(torch.as_tensor(bad), before, rtol=0, atol=0, equal_nan=True)


def test_valid_edge_images_run_within_budget(classifier, batch):
    """Pixels exactly 0 and 1, and float rounding just above 1, are in the domain."""
    images, labels = batch
    edges = images.clone()
    edges[0] = 0.0
    edges[1] = 1.0
    edges[2, 0, 0, 0] = 1 + 1e-6
    result = PGD(eps=EPS, steps=3, random_start=True)(classifier, edges, labels)
    assert result.adv_images.min() >= 0 and result.adv_images.max() <= 1
    assert_budget(result.adv_images, edges, "linf", EPS)


def test_float64_images_run_on_a_float64_model(toy_classifier, batch):
    images, labels = batch
    model = copy.deepcopy(toy_classifier.model).double()
    objective = ClassificationObjective(model, num_classes=4)
    result = PGD(eps=EPS, steps=3)(objective, images.double(), labels)
    assert result.adv_images.dtype == torch.float64 and result.adv_images.max() <= 1
    assert_budget(result.adv_images, images.double(), "linf", EPS)
    with pytest.raises(ValueError, match="images are torch.float32 but the model's parameters torch.float64"):
        PGD(eps=EPS, steps=3)(objective, images, labels)


def test_any_floating_dtype_passes_under_autocast(batch):
    model = nn.Linear(3, 2)
    half = batch[0].bfloat16()
    with pytest.raises(ValueError, match="bfloat16"):
        check_images(half, model)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        check_images(half, model)
    check_images(batch[0], nn.ReLU())  # no parameters: nothing to match


BAD_LABELS = {
    "label K": (torch.tensor([0, 1, 2, 4]), r"target\[3\] = 4: class indices must be in \[0, 4\)"),
    "label -1": (torch.tensor([0, -1, 2, 3]), r"target\[1\] = -1: class indices must be in \[0, 4\)"),
    "float": (torch.tensor([0.0, 1.0, 2.0, 3.0]), r"target must be a tensor of class indices \(int64\)"),
    "int32": (torch.tensor([0, 1, 2, 3], dtype=torch.int32), r"class indices \(int64\), got a torch.int32"),
    "(B, 1)": (torch.tensor([[0], [1], [2], [3]]), r"target must have shape \(4,\), got \(4, 1\)"),
    "3 labels": (torch.tensor([0, 1, 2]), r"target must have shape \(4,\), got \(3,\)"),
    "one-hot": (torch.eye(4), r"class indices \(int64\), got a torch.float32 tensor of shape \(4, 4\)"),
    "list": ([0, 1, 2, 3], r"class indices \(int64\), got a list of 4"),
}


@pytest.mark.parametrize("case", BAD_LABELS)
def test_class_labels_outside_the_model_fail_naming_the_sample(classifier, batch, case):
    labels, message = BAD_LABELS[case]
    with pytest.raises(ValueError, match=message):
        FGSM(eps=EPS)(classifier, batch[0], labels)


def test_an_objective_without_num_classes_learns_it_from_its_first_forward(toy_classifier, batch):
    images, labels = batch
    objective = ClassificationObjective(toy_classifier.model)
    objective.check_target(images, labels.clone().fill_(7))  # K unknown yet: only >= 0 is checked
    with pytest.raises(ValueError, match=r"target\[0\] = -1"):
        objective.check_target(images, labels.clone().fill_(-1))
    objective.forward(images)
    assert objective.num_classes == 4
    with pytest.raises(ValueError, match=r"target\[0\] = 7: class indices must be in \[0, 4\)"):
        FGSM(eps=EPS)(objective, images, labels.clone().fill_(7))


def test_task_modules_give_their_objectives_the_number_of_classes():
    torch.manual_seed(0)
    classifier = ClassifierModule("resnet18", num_classes=3).eval().objective()
    assert classifier.num_classes == 3
    with pytest.raises(ValueError, match=r"target\[1\] = 3: class indices must be in \[0, 3\)"):
        classifier.check_target(torch.rand(2, 3, 8, 8), torch.tensor([0, 3]))
    segmenter = SegmenterModule(in_channels=1, classes=1, encoder_depth=3).eval().objective()
    masks = torch.zeros(2, 8, 8, dtype=torch.long)
    segmenter.check_target(torch.rand(2, 1, 8, 8), masks.bool())  # binary: bool masks are 0 and 1
    masks[1, 2, 3] = 2
    with pytest.raises(ValueError, match=r"target\[1, 2, 3\] = 2: class indices must be in \[0, 2\)"):
        segmenter.check_target(torch.rand(2, 1, 8, 8), masks)


BAD_MASKS = {
    "label 2 of a 2-class model": (lambda m: m.masked_fill(m == 1, 2), r"target\[\d+, \d+, \d+\] = 2: .* \[0, 2\)"),
    "label -1": (lambda m: m - 1, r"target\[0, 0, 0\] = -1: class indices must be in \[0, 2\)"),
    "ignore index -100": (lambda m: m.masked_fill(m == 0, -100), r"= -100: class indices must be in \[0, 2\)"),
    "half size": (lambda m: m[:, ::2, ::2], r"target must have shape \(4, 16, 16\), got \(4, 8, 8\)"),
    "(B, 1, H, W)": (lambda m: m[:, None], r"target must have shape \(4, 16, 16\), got \(4, 1, 16, 16\)"),
    "float": (lambda m: m.float() / 2, r"class indices \(uint8, .*, bool\), got a torch.float32 tensor"),
}


@pytest.mark.parametrize("case", BAD_MASKS)
def test_masks_of_the_wrong_size_or_labels_fail_naming_sample_and_pixel(toy_segmenter, toy_batch, case):
    make, message = BAD_MASKS[case]
    images, _, masks = toy_batch
    objective = SegmentationObjective(toy_segmenter.model, num_classes=2)
    with pytest.raises(ValueError, match=message):
        FGSM(eps=EPS)(objective, images[:4], make(masks[:4]))


def test_valid_masks_of_any_integer_dtype_run(toy_segmenter, toy_batch):
    images, _, masks = toy_batch
    objective = SegmentationObjective(toy_segmenter.model, num_classes=2)
    for mask in (masks[:4], masks[:4].to(torch.uint8), masks[:4].bool()):
        result = FGSM(eps=EPS)(objective, images[:4], mask)
        assert_budget(result.adv_images, images[:4], "linf", EPS)


def detection_targets() -> list[dict[str, Tensor]]:
    return [
        {"boxes": torch.tensor([[4.0, 6.0, 30.0, 40.0], [0.0, 0.0, 64.0, 64.0]]), "labels": torch.tensor([1, 3])},
        {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)},
    ]


def replaced(sample: int, **entries: object) -> list[dict[str, object]]:
    targets: list[dict[str, object]] = detection_targets()  # type: ignore[assignment]
    targets[sample] = {**targets[sample], **entries}
    return targets


BAD_DETECTIONS = {
    "NaN box": (
        replaced(0, boxes=torch.tensor([[4.0, float("nan"), 30.0, 40.0], [1, 1, 2, 2.0]])),
        r"target\[0\]\['boxes'\]\[0\] = \[4\.0, nan, 30\.0, 40\.0\] is not a box inside the 64x64 image",
    ),
    "Inf box": (
        replaced(0, boxes=torch.tensor([[4.0, 6.0, 30.0, 40.0], [1, 1, float("inf"), 2.0]])),
        r"target\[0\]\['boxes'\]\[1\] = \[1\.0, 1\.0, inf, 2\.0\]",
    ),
    "box beyond the right edge": (
        replaced(1, boxes=torch.tensor([[10.0, 12.0, 65.0, 44.0]]), labels=torch.tensor([2])),
        r"target\[1\]\['boxes'\]\[0\] = \[10\.0, 12\.0, 65\.0, 44\.0\]",
    ),
    "negative corner": (
        replaced(1, boxes=torch.tensor([[-1.0, 12.0, 20.0, 44.0]]), labels=torch.tensor([2])),
        r"target\[1\]\['boxes'\]\[0\]",
    ),
    "x1 > x2": (
        replaced(1, boxes=torch.tensor([[50.0, 12.0, 10.0, 44.0]]), labels=torch.tensor([2])),
        r"target\[1\]\['boxes'\]\[0\] = \[50\.0, 12\.0, 10\.0, 44\.0\]",
    ),
    "zero height": (
        replaced(1, boxes=torch.tensor([[5.0, 12.0, 10.0, 12.0]]), labels=torch.tensor([2])),
        r"target\[1\]\['boxes'\]\[0\]",
    ),
    "background label 0": (replaced(0, labels=torch.tensor([1, 0])), r"target\[0\]\['labels'\]\[1\] = 0: .* \[1, 4\)"),
    "label K + 1": (replaced(0, labels=torch.tensor([4, 1])), r"target\[0\]\['labels'\]\[0\] = 4: .* \[1, 4\)"),
    "float labels": (
        replaced(0, labels=torch.tensor([1.0, 2.0])),
        r"target\[0\]\['labels'\] must be a tensor of class",
    ),
    "labels per box": (
        replaced(0, labels=torch.tensor([1])),
        r"target\[0\]\['labels'\] must have shape \(2,\), got \(1,\)",
    ),
    "boxes (4,)": (replaced(1, boxes=torch.tensor([1.0, 2.0, 3.0, 4.0])), r"target\[1\]\['boxes'\] must be a float"),
    "integer boxes": (
        replaced(1, boxes=torch.tensor([[1, 2, 3, 4]]), labels=torch.tensor([1])),
        r"target\[1\]\['boxes'\] must be a floating-point \(N, 4\) tensor",
    ),
    "no labels": (
        [detection_targets()[0], {"boxes": torch.zeros(0, 4)}],
        r"target\[1\] must be a dict with 'boxes' and 'labels', got a dict with keys \['boxes'\]",
    ),
    "one dict for two images": (detection_targets()[:1], r"target must be a list of 2 dicts .* got a list of 1"),
    "a tensor": (torch.zeros(2, 4), r"target must be a list of 2 dicts .* got a torch.float32 tensor"),
}


@pytest.mark.parametrize("case", BAD_DETECTIONS)
def test_detection_targets_outside_the_image_or_classes_fail_naming_the_sample(detector, case):
    target, message = BAD_DETECTIONS[case]
    images = torch.rand(2, 3, DETECTION_SIZE, DETECTION_SIZE, generator=torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match=message):
        FGSM(eps=EPS)(detector.objective(), images, target)


def test_valid_detection_targets_with_edge_boxes_and_no_boxes_run(detector):
    images = torch.rand(2, 3, DETECTION_SIZE, DETECTION_SIZE, generator=torch.Generator().manual_seed(0))
    targets = detection_targets()
    result = FGSM(eps=EPS)(detector.objective(), images, targets)
    assert_budget(result.adv_images, images, "linf", EPS)
    assert detector.objective().num_classes == 3


class PlainObjective:
    """A user's objective written before ``check_target`` existed."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model

    def forward(self, images: Tensor) -> Tensor:
        return self.model(images)

    def loss(self, outputs: Tensor, target: Tensor) -> Tensor:
        return nn.functional.cross_entropy(outputs, target, reduction="none")

    def predict(self, outputs: Tensor) -> Tensor:
        return outputs.argmax(dim=1)

    def logits(self, outputs: Tensor) -> Tensor:
        return outputs

    def dense_target(self, outputs: Tensor, target: Tensor) -> Tensor:
        return target

    def divergence(self, outputs: Tensor, reference: Tensor) -> Tensor:
        return nn.functional.cross_entropy(outputs, reference.softmax(dim=1), reduction="none")


def test_objectives_without_check_target_still_run_and_images_are_still_checked(toy_classifier, batch):
    images, labels = batch
    objective = PlainObjective(toy_classifier.model)
    result = PGD(eps=EPS, steps=2)(objective, images, labels)
    assert torch.equal(result.adv_images, PGD(eps=EPS, steps=2)(toy_classifier, images, labels).adv_images)
    with pytest.raises(ValueError, match="images must lie in"):
        PGD(eps=EPS, steps=2)(objective, images * 255, labels)


def test_an_ensemble_checks_the_target_against_each_member(classifier, batch):
    images, labels = batch
    three = ClassificationObjective(classifier.model, num_classes=3)
    ensemble = EnsembleObjective([classifier, three])
    PGD(eps=EPS, steps=1)(ensemble, images, labels.clamp(max=2))
    with pytest.raises(ValueError, match=re.escape("class indices must be in [0, 3)")):
        PGD(eps=EPS, steps=1)(ensemble, images, labels.clamp(min=3))


def test_attacks_that_need_no_target_accept_none(classifier, batch):
    result = PGD(eps=EPS, steps=2, target_mode="least_likely")(classifier, batch[0], None)
    assert_budget(result.adv_images, batch[0], "linf", EPS)
