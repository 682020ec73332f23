"""Property-based fuzzing (hypothesis) of the attack boundary: random images and targets, random constructor
settings and random budget texts either work as documented or fail with one ValueError naming the argument;
never another exception, never silent acceptance of input outside the domain."""

from __future__ import annotations

import inspect
import math
import numbers
from typing import Any

import pytest
import torch
from hypothesis import event, given, settings
from hypothesis import strategies as st
from torch import Tensor

from attacks import APGD, ATTACKS, FGSM, PGD, DeepFool, SquareAttack
from attacks.budgets import budget_label, budget_text, budget_value, parse_budget
from attacks.validation import IMAGE_TOLERANCE
from lightning_modules.detection_objective import BOX_TOLERANCE
from lightning_modules.detector import DetectorModule
from lightning_modules.objectives import ClassificationObjective, SegmentationObjective
from tests.attacks.invariants import assert_budget
from tests.attacks.toys import blob_images

FUZZ = settings(max_examples=60, deadline=None)
EPS = 4 / 255
CLASSES = 4
DETECTION_SIZE = 64
SPECIAL = (math.nan, math.inf, -math.inf)
IMAGE_DTYPES = (torch.float64, torch.float16, torch.bfloat16, torch.uint8, torch.int64, torch.bool)
OTHER_LABEL_DTYPES = (torch.int32, torch.uint8, torch.bool, torch.float32)
MASK_DTYPES = (torch.int64, torch.int32, torch.uint8, torch.bool)


def mostly(usual: Any, *others: Any) -> st.SearchStrategy[Any]:
    """``usual`` three times in four, else one of ``others``: most examples valid, the rest probing one rule."""
    return st.sampled_from([usual] * 3 * len(others) + list(others))


ATTACKS_UNDER_TEST = {
    "fgsm": (FGSM(eps=EPS), "linf", EPS),
    "pgd_l2": (PGD(eps=0.5, steps=2, norm="l2", random_start=True), "l2", 0.5),
    "apgd": (APGD(eps=EPS, steps=2), "linf", EPS),
    "square": (SquareAttack(eps=EPS, max_queries=4), "linf", EPS),
    "deepfool": (DeepFool(steps=2, candidates=3), None, None),
}


@st.composite
def image_batches(draw: st.DrawFn) -> Tensor:
    """Mostly (B, 3, H, W) batches, also other ranks and empty ones, in a range from in-domain to 0..255, with
    NaN/Inf pixels at random positions, in floating, integer and bool dtypes."""
    rank = draw(mostly(4, 2, 3, 5))
    if rank == 4:
        batch = draw(st.integers(1, 3)) if draw(st.integers(0, 7)) else 0
        shape = [batch, 3, draw(st.integers(1, 6)), draw(st.integers(1, 6))]
    else:
        shape = draw(st.lists(st.integers(1, 3), min_size=rank, max_size=rank))
    low = draw(mostly(0.0, -1e-3, -1.0))
    high = draw(mostly(1.0, 1 + 1e-6, 1.01, 255.0))
    generator = torch.Generator().manual_seed(draw(st.integers(0, 2**16)))
    images = low + (high - low) * torch.rand(shape, generator=generator, dtype=torch.float64)
    if draw(st.booleans()):
        images = images.round()  # exact 0 and 1 (and whole grey levels)
    flat = images.view(-1)
    if draw(st.integers(0, 3)) == 0 and flat.numel():
        flat[draw(st.integers(0, flat.numel() - 1))] = draw(st.sampled_from(SPECIAL))
    return images.to(draw(mostly(torch.float32, *IMAGE_DTYPES)))


def images_in_domain(images: Tensor) -> bool:
    """The input rules, written out: float32 (the toy model's dtype), (B, C, H, W), non-empty, finite, [0, 1]."""
    if images.dtype != torch.float32 or images.dim() != 4 or images.numel() == 0:
        return False
    return bool(images.isfinite().all()) and -IMAGE_TOLERANCE <= images.min() and images.max() <= 1 + IMAGE_TOLERANCE


@st.composite
def label_tensors(draw: st.DrawFn, shape: tuple[int, ...], classes: int) -> Tensor:
    """Labels in [0, classes) mostly int64 of ``shape``; sometimes of another shape or dtype, or with one label
    -1 or ``classes``."""
    shape = draw(mostly(shape, (shape[0] + 1, *shape[1:]), (*shape, 1)))
    count = math.prod(shape)
    labels = torch.tensor(draw(st.lists(st.integers(0, classes - 1), min_size=count, max_size=count)))
    outlier = draw(mostly(None, -1, classes))
    if outlier is not None and count:
        labels.view(-1)[draw(st.integers(0, count - 1))] = outlier
    return labels.reshape(shape).to(draw(mostly(torch.int64, *OTHER_LABEL_DTYPES)))


def labels_valid(labels: Tensor, shape: tuple[int, ...], classes: int, dtypes: tuple[torch.dtype, ...]) -> bool:
    if labels.dtype not in dtypes or tuple(labels.shape) != shape:
        return False
    return labels.numel() == 0 or bool(((labels.long() >= 0) & (labels.long() < classes)).all())


def assert_fails_naming(error: ValueError, argument: str) -> None:
    assert str(error).startswith(argument), f"the error should name {argument!r}: {error}"


@pytest.fixture(scope="module")
def classifier(toy_classifier) -> ClassificationObjective:
    return ClassificationObjective(toy_classifier.model, num_classes=CLASSES)


@FUZZ
@given(data=st.data(), name=st.sampled_from(sorted(ATTACKS_UNDER_TEST)))
def test_attacks_run_within_budget_or_name_the_bad_input(classifier, data, name):
    attack, norm, eps = ATTACKS_UNDER_TEST[name]
    images = data.draw(image_batches(), label="images")
    batch = images.shape[0]
    target = data.draw(label_tensors((batch,), CLASSES), label="target")
    images_ok = images_in_domain(images)
    target_ok = labels_valid(target, (batch,), CLASSES, (torch.int64,))
    try:
        result = attack(classifier, images, target)
    except ValueError as error:
        assert not (images_ok and target_ok), f"valid input rejected: {error}"
        assert_fails_naming(error, "images" if not images_ok else "target")
        event(f"rejected: {str(error).split(' ')[0]}")
        return
    event("ran")
    assert images_ok and target_ok, "input outside the domain accepted"
    adv = result.adv_images
    assert adv.shape == images.shape and adv.dtype == images.dtype
    assert adv.min() >= 0 and adv.max() <= 1
    assert_budget(adv, images, norm, eps)


@pytest.fixture(scope="module")
def segmenter(toy_segmenter) -> SegmentationObjective:
    return SegmentationObjective(toy_segmenter.model, num_classes=2)


@FUZZ
@given(data=st.data())
def test_segmentation_masks_run_or_name_the_target(segmenter, data):
    images = blob_images(3, torch.Generator().manual_seed(123))[0][: data.draw(st.integers(1, 3), label="batch")]
    shape = (len(images), *images.shape[-2:])
    drawn = (shape[0], shape[1] // 2, shape[2]) if data.draw(st.booleans(), label="half height") else shape
    masks = data.draw(label_tensors(drawn, 2), label="masks")
    valid = labels_valid(masks, shape, 2, MASK_DTYPES)
    try:
        result = FGSM(eps=EPS)(segmenter, images, masks)
    except ValueError as error:
        assert not valid, f"valid mask rejected: {error}"
        assert_fails_naming(error, "target")
        event("rejected")
        return
    event("ran")
    assert valid, "mask outside the domain accepted"
    assert_budget(result.adv_images, images, "linf", EPS)


@pytest.fixture(scope="module")
def detection_objective():
    torch.manual_seed(0)
    size = {"min_size": DETECTION_SIZE, "max_size": DETECTION_SIZE}
    return DetectorModule(num_classes=3, proposals_per_image=20, **size).eval().objective()


DETECTION_FAULTS = ("coordinate", "label", "label too few", "no labels", "dict too few")
coordinates = st.one_of(st.floats(-8, DETECTION_SIZE + 8), st.sampled_from((0.0, float(DETECTION_SIZE), *SPECIAL)))


@st.composite
def detection_targets(draw: st.DrawFn, images: int) -> Any:
    """One dict per image with 0-3 boxes inside the image (edges included) and labels 1..3; half the time with
    one fault: a coordinate anywhere (outside, swapped, NaN, Inf), a label 0 or 4, a label too few, no
    labels, or a dict too few."""
    samples = []
    for _ in range(images):
        count = draw(st.integers(0, 3))
        rows = []
        for _ in range(count):
            x1, y1 = (draw(st.floats(0, DETECTION_SIZE - 1)) for _ in "xy")
            rows.append([x1, y1, draw(st.floats(x1 + 0.5, DETECTION_SIZE)), draw(st.floats(y1 + 0.5, DETECTION_SIZE))])
        labels = torch.tensor(draw(st.lists(st.integers(1, 3), min_size=count, max_size=count)), dtype=torch.int64)
        samples.append({"boxes": torch.tensor(rows).reshape(count, 4), "labels": labels})
    fault = draw(st.sampled_from((None,) * 5 + DETECTION_FAULTS))
    index = draw(st.integers(0, images - 1))
    sample = samples[index]
    if fault == "dict too few":
        del samples[index]
    elif fault == "no labels":
        del sample["labels"]
    elif fault == "label too few":
        sample["labels"] = sample["labels"][:-1] if len(sample["labels"]) else torch.ones(1, dtype=torch.int64)
    elif fault and len(sample["boxes"]):
        row = draw(st.integers(0, len(sample["boxes"]) - 1))
        if fault == "label":
            sample["labels"][row] = draw(st.sampled_from((0, 4)))
        else:
            sample["boxes"][row, draw(st.integers(0, 3))] = draw(coordinates)
    return samples


def detection_target_valid(target: list[dict[str, Tensor]], images: int) -> bool:
    """The detection input rules, written out: a dict per image, finite boxes inside it, one label 1..3 each."""
    if len(target) != images:
        return False
    for sample in target:
        if "labels" not in sample or len(sample["labels"]) != len(sample["boxes"]):
            return False
        boxes, labels = sample["boxes"], sample["labels"]
        x1, y1, x2, y2 = boxes.unbind(dim=1)
        low, high = -BOX_TOLERANCE, DETECTION_SIZE + BOX_TOLERANCE
        inside = (x1 >= low) & (y1 >= low) & (x2 <= high) & (y2 <= high) & (x1 < x2) & (y1 < y2)
        if not (inside.all() and boxes.isfinite().all() and ((labels >= 1) & (labels <= 3)).all()):
            return False
    return True


@FUZZ
@given(data=st.data())
def test_detection_targets_pass_the_check_or_name_the_sample(detection_objective, data):
    """The check ``Attack.__call__`` runs for detection, fuzzed directly (a detector forward per example would
    take seconds; test_input_guards runs the attack on valid and invalid detection targets)."""
    images = torch.rand(2, 3, DETECTION_SIZE, DETECTION_SIZE)
    target = data.draw(detection_targets(2), label="target")
    valid = detection_target_valid(target, 2)
    try:
        detection_objective.check_target(images, target)
    except ValueError as error:
        assert not valid, f"valid target rejected: {error}"
        assert_fails_naming(error, "target")
        event("rejected")
        return
    event("passed")
    assert valid, "target outside the domain accepted"


def fuzzed_parameters(cls: type) -> list[tuple[str, str]]:
    """(parameter, kind) for each numeric ("number", None defaults included) and named-choice ("choice")
    constructor argument of ``cls``; flags and tuples are left out."""
    found = []
    for parameter in inspect.signature(cls).parameters.values():
        default = parameter.default
        if not isinstance(default, (bool, tuple, list)):
            found.append((parameter.name, "choice" if isinstance(default, str) else "number"))
    return found


REQUIRED = {"eps": 8 / 255}  # Square and UAP take their budget without a default
values = {
    "number": st.one_of(
        st.floats(allow_nan=True, allow_infinity=True),
        st.integers(-(10**30), 10**30),
        st.sampled_from((0, 1, 2, 0.5, 1e-3, 8 / 255, -1, 3.0, 2.5, 1 + 1e-9)),
        st.text(max_size=4),
        st.booleans(),
        st.none(),
    ),
    # sizes allocate at construction (Gaussian kernels): huge ones are valid but would exhaust memory
    "size": st.one_of(st.integers(-3, 31), st.sampled_from((2.5, 3.0, math.nan, math.inf, "3", True, None))),
    "choice": st.one_of(
        st.text(max_size=8), st.sampled_from(("linf", "l2", "l1", "untargeted", "least_likely", "plus")), st.integers()
    ),
}


@pytest.mark.parametrize("name", sorted(ATTACKS))
@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_constructors_keep_only_valid_settings_or_name_the_field(name, data):
    cls = ATTACKS[name].cls
    parameter, kind = data.draw(st.sampled_from(fuzzed_parameters(cls)), label="parameter")
    value = data.draw(values["size" if parameter == "kernel_size" else kind], label=parameter)
    arguments = {**{k: v for k, v in REQUIRED.items() if k in inspect.signature(cls).parameters}, parameter: value}
    try:
        attack = cls(**arguments)
    except ValueError as error:
        assert parameter in str(error), f"{name}({parameter}={value!r}): the error does not name it: {error}"
        event("rejected")
        return
    event("accepted")
    if kind == "choice":
        assert isinstance(value, str)
        return
    assert value is None or (
        isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value) and value >= 0
    ), f"{name} accepted {parameter}={value!r}"
    if parameter == "eps" and value is not None and attack.settings.get("norm", "linf") == "linf":
        assert value <= 1, f"{name} accepted an Linf eps of {value}"


budget_texts = st.one_of(
    st.builds(lambda a, b: f"{a}/{b}", st.integers(-5, 300), st.integers(-5, 300)),
    st.builds(lambda a, b: f"{a} / {b}", st.floats(allow_nan=True), st.floats(allow_nan=True)),
    st.builds(lambda a, b: f"{a}_{b}", st.integers(0, 300), st.integers(1, 300)),
    st.from_regex(r"\A[-+]?[0-9]{0,3}(\.[0-9]{0,3})?(e[-+]?[0-9]{1,3})?(/[-+]?[0-9.e]{0,4})?\Z"),
    st.text(max_size=8),
)
budget_values = st.one_of(
    budget_texts,
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(-(10**30), 10**30),
    st.booleans(),
    st.none(),
    st.just("min"),
    st.lists(st.integers(), max_size=2),
)


@FUZZ
@given(value=budget_values)
def test_parse_budget_gives_a_finite_budget_or_names_where(value):
    try:
        budget = parse_budget(value, "attacks.pgd.budgets")
    except ValueError as error:
        assert str(error).startswith("attacks.pgd.budgets: budget")
        event("rejected")
        return
    event("accepted")
    if value is None or value == "min":
        assert budget is None
        return
    assert not isinstance(value, bool) and "_" not in str(value), f"{value!r} accepted as {budget}"
    assert isinstance(budget, float) and math.isfinite(budget) and budget >= 0 and math.copysign(1, budget) == 1
    numerator, _, denominator = str(value).replace(" ", "").partition("/")
    assert budget == float(numerator) / float(denominator or 1)


@FUZZ
@given(budget=st.one_of(st.integers(0, 2550).map(lambda tenths: tenths / 2550), st.floats(0, 1e6)))
def test_budget_labels_read_back_as_the_budget(budget):
    label = budget_label(budget)
    assert "/" not in label and label == budget_label(parse_budget(budget_text(label), "label"))
    assert parse_budget(budget_text(label), "label") == pytest.approx(budget, rel=1e-5, abs=1e-300)
    assert budget_value(label) == pytest.approx(budget, rel=1e-5, abs=1e-300)


def test_a_budget_a_hair_below_a_short_decimal_grey_level_reads_back_as_that_decimal():
    assert budget_label(1.9999999998835847) == budget_label(2.0) == "2"  # 510/255, found by the fuzzer above
