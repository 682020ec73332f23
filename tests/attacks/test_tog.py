"""TOG attacks: registration and settings, the designed targets and signed steps in closed form on Faster
R-CNN and RetinaNet, the attack rules, and each attack's own goal on a trained detector."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor
from torchmetrics.detection import MeanAveragePrecision
from torchvision.ops import box_iou, sigmoid_focal_loss

from attacks import ATTACKS, PGD, AttackEntry, TOGFabrication, TOGMislabeling, TOGUntargeted, TOGVanishing, build_attack
from attacks.tog import confident, no_objects
from lightning_modules.detector import DetectorModule
from lightning_modules.retinanet_objective import RetinaNetObjective
from tests.attacks.invariants import assert_invariants

SIZE = 64
EPS = 8 / 255
ARCHITECTURES = ("faster_rcnn", "retinanet")
TOG_ATTACKS = {
    "tog_vanishing": TOGVanishing,
    "tog_fabrication": TOGFabrication,
    "tog_mislabeling": TOGMislabeling,
    "tog_untargeted": TOGUntargeted,
}
THRESHOLD = 0.2  # an untrained detector's scores sit near 1 / (K + 1) (Faster R-CNN) or its raised prior
BACKBONES = {"faster_rcnn": "small", "retinanet": "resnet18"}  # the cheapest backbone of each architecture


def detector(architecture: str, num_classes: int = 3) -> DetectorModule:
    """An untrained detector with a few detections per image (at most 8, for speed). An untrained RetinaNet
    scores every class at its 0.01 prior and detects nothing: its classes 1..K get the logits 0.8, 0.6, ...
    (column 0, the background label, keeps the prior)."""
    torch.manual_seed(0)
    module = DetectorModule(
        BACKBONES[architecture],
        num_classes=num_classes,
        min_size=SIZE,
        max_size=SIZE,
        proposals_per_image=20,
        architecture=architecture,
    ).eval()
    if architecture == "retinanet":
        bias = module.model.head.classification_head.cls_logits.bias.data.view(-1, num_classes + 1)
        bias[:, 1:] = 0.8 - 0.2 * torch.arange(num_classes)
        module.model.detections_per_img = 8
    else:
        module.model.roi_heads.detections_per_img = 8
    return module


@pytest.fixture(scope="module", params=ARCHITECTURES)
def objective(request):
    return detector(request.param).objective()


@pytest.fixture()
def images() -> Tensor:
    return torch.rand(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(3))


@pytest.fixture()
def targets() -> list[dict[str, Tensor]]:
    return [
        {"boxes": torch.tensor([[4.0, 6.0, 30.0, 40.0], [36.0, 30.0, 60.0, 58.0]]), "labels": torch.tensor([1, 3])},
        {"boxes": torch.tensor([[10.0, 12.0, 50.0, 44.0]]), "labels": torch.tensor([2])},
    ]


def test_registered_under_their_names_with_the_reference_defaults():
    for name, cls in TOG_ATTACKS.items():
        assert ATTACKS[name] == AttackEntry(cls, "eps") and cls.name == name
        assert build_attack(name, 4 / 255).eps == 4 / 255
        attack = cls()
        assert isinstance(attack, PGD) and attack.random_start and attack.steps == 10
        assert attack.eps == pytest.approx(8 / 255) and attack.alpha == pytest.approx(2 / 255)
        assert attack.settings["early_stop"] is False
    assert (
        TOGVanishing().settings["target_mode"] == "given" and TOGFabrication().settings["target_mode"] == "untargeted"
    )
    assert TOGMislabeling(mode="ll").settings["mode"] == "ll" and TOGUntargeted().settings["score_threshold"] == 0.5


@pytest.mark.parametrize(
    ("cls", "arguments", "name"),
    [
        (TOGMislabeling, {"mode": "most_likely"}, "mode"),
        (TOGMislabeling, {"score_threshold": 1.5}, "score_threshold"),
        (TOGUntargeted, {"score_threshold": -0.1}, "score_threshold"),
        (TOGVanishing, {"eps": 8}, "eps"),
    ],
)
def test_bad_settings_fail_naming_them(cls, arguments, name):
    with pytest.raises(ValueError, match=name):
        cls(**arguments)
    with pytest.raises(TypeError, match="target_mode"):
        cls(target_mode="given")


def test_the_loss_towards_no_objects_is_the_objectness_loss(objective, images):
    """Towards {} every box and class term is zero: Faster R-CNN's loss is the mean RPN objectness cross
    entropy towards 'no object' plus the mean ROI cross entropy towards the background; RetinaNet's the focal
    loss of every anchor and class towards 0."""
    outputs = objective.forward(images)
    loss = objective.loss(outputs, no_objects(images))
    if hasattr(outputs, "objectness"):
        rpn = F.binary_cross_entropy_with_logits(
            outputs.objectness, torch.zeros_like(outputs.objectness), reduction="none"
        )
        roi = [
            F.cross_entropy(logits.T[valid], torch.zeros(int(valid.sum()), dtype=torch.long))
            for logits, valid in zip(outputs.class_logits, outputs.valid, strict=True)
        ]
        expected = rpn.mean(dim=1) + torch.stack(roi)
    else:
        scores = outputs.class_logits
        expected = sigmoid_focal_loss(scores, torch.zeros_like(scores), reduction="none").sum(dim=(1, 2))
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-6)


def one_signed_step(objective, images: Tensor, goal: list[dict[str, Tensor]], sign: float) -> tuple[Tensor, Tensor]:
    """x + sign * eps * sign(grad loss(x; goal)) in [0, 1], and loss(x; goal)."""
    x = images.clone().requires_grad_(True)
    loss = objective.loss(objective.forward(x), goal)
    (gradient,) = torch.autograd.grad(loss.sum(), x)
    return (images + sign * EPS * gradient.sign()).clamp(0, 1), loss.detach()


@pytest.mark.parametrize(("cls", "sign"), [(TOGVanishing, -1.0), (TOGFabrication, 1.0)])
def test_vanishing_descends_and_fabrication_ascends_the_loss_towards_no_objects(objective, images, cls, sign):
    result = cls(eps=EPS, alpha=EPS, steps=1, random_start=False)(objective, images, None)
    expected, loss = one_signed_step(objective, images, no_objects(images), sign)
    torch.testing.assert_close(result.adv_images, expected, rtol=0, atol=1e-6)
    torch.testing.assert_close(result.trace.losses[:, 0], sign * loss)


def test_untargeted_ascends_the_loss_towards_the_clean_detections(objective, images):
    with torch.no_grad():
        clean = confident(objective.predict(objective.forward(images)), THRESHOLD)
    assert all(len(found["labels"]) for found in clean), "the detector should detect something"
    attack = TOGUntargeted(score_threshold=THRESHOLD, eps=EPS, alpha=EPS, steps=1, random_start=False)
    result = attack(objective, images, None)
    expected, loss = one_signed_step(objective, images, clean, 1.0)
    torch.testing.assert_close(result.adv_images, expected, rtol=0, atol=1e-6)
    torch.testing.assert_close(result.trace.losses[:, 0], loss)


def test_mislabeling_descends_the_loss_towards_its_designed_target(objective, images):
    attack = TOGMislabeling(score_threshold=THRESHOLD, eps=EPS, alpha=EPS, steps=1, random_start=False)
    goal = attack.designed_target(objective, images, None)
    expected, loss = one_signed_step(objective, images, goal, -1.0)
    result = attack(objective, images, None)
    torch.testing.assert_close(result.adv_images, expected, rtol=0, atol=1e-6)
    torch.testing.assert_close(result.trace.losses[:, 0], -loss)


def expected_relabelling(objective, images: Tensor, mode: str) -> list[Tensor]:
    """Faster R-CNN's relabelling read directly: the valid proposal with IoU >= 0.5 with the detection that is
    most confident in its label gives the class probabilities; the most (least) likely class other than the
    background and the label is the new one."""
    outputs = objective.forward(images)
    detections = confident(objective.predict(outputs), THRESHOLD)
    labels = []
    for index, found in enumerate(detections):
        valid = outputs.valid[index]
        probabilities = outputs.class_logits[index].T[valid].softmax(dim=1)
        overlap = box_iou(found["boxes"], outputs.proposals[index][valid])
        new = []
        for box, label in enumerate(found["labels"].tolist()):
            source = probabilities[:, label].masked_fill(overlap[box] < 0.5, -1.0).argmax()
            others = {c: probabilities[source, c].item() for c in range(1, probabilities.shape[1]) if c != label}
            new.append((max if mode == "ml" else min)(others, key=others.get))
        labels.append(torch.tensor(new, dtype=torch.long))
    return labels


@pytest.mark.parametrize("mode", ["ml", "ll"])
def test_mislabeling_gives_each_detection_the_most_or_least_likely_other_class(mode, images):
    objective = detector("faster_rcnn", num_classes=4).objective()
    with torch.no_grad():
        goal = TOGMislabeling(mode=mode, score_threshold=THRESHOLD).designed_target(objective, images, None)
        clean = confident(objective.predict(objective.forward(images)), THRESHOLD)
        expected = expected_relabelling(objective, images, mode)
    for designed, found, labels in zip(goal, clean, expected, strict=True):
        assert len(labels) > 0 and torch.equal(designed["boxes"], found["boxes"])
        assert torch.equal(designed["labels"], labels)
        assert (designed["labels"] != found["labels"]).all() and (designed["labels"] >= 1).all()


def test_mislabeling_relabels_one_stage_detections_too(images):
    objective = detector("retinanet").objective()
    with torch.no_grad():
        clean = confident(objective.predict(objective.forward(images)), THRESHOLD)
        for mode in ("ml", "ll"):
            goal = TOGMislabeling(mode=mode, score_threshold=THRESHOLD).designed_target(objective, images, None)
            for designed, found in zip(goal, clean, strict=True):
                assert len(found["labels"]) > 0
                assert (designed["labels"] != found["labels"]).all()
                assert ((designed["labels"] >= 1) & (designed["labels"] <= 3)).all()


def test_mislabeling_needs_two_classes(images):
    objective = detector("faster_rcnn", num_classes=1).objective()
    with pytest.raises(ValueError, match="at least 2 classes"):
        TOGMislabeling(score_threshold=0.0, steps=1)(objective, images, None)


@pytest.mark.parametrize("name", sorted(TOG_ATTACKS))
def test_tog_attacks_keep_the_attack_rules(name, objective, images, targets):
    """Batch independence is not asserted for RetinaNet towards its own detections: its L1 box loss sits at its
    kink at the anchors that made them (the target deltas are the predicted ones), so the sign of that gradient
    is float rounding, which differs between batch sizes."""
    on_detections = name in ("tog_mislabeling", "tog_untargeted")
    thresholds = {"score_threshold": THRESHOLD} if on_detections else {}
    attack = build_attack(name, EPS, steps=2, random_start=False, **thresholds)
    at_kink = on_detections and isinstance(objective, RetinaNetObjective)
    assert_invariants(attack, objective, images, targets, "linf", EPS, batch_independent=not at_kink)


def test_random_starts_are_drawn_per_sample_from_the_ids(images):
    objective = detector("faster_rcnn").objective()
    attack = TOGVanishing(steps=1)
    batch = attack(objective, images, None, ids=["a", "b"]).adv_images
    swapped = attack(objective, images.flip(0), None, ids=["b", "a"]).adv_images
    alone = attack(objective, images[1:], None, ids=["b"]).adv_images
    torch.testing.assert_close(swapped.flip(0), batch, rtol=0, atol=1e-5)
    torch.testing.assert_close(alone, batch[1:], rtol=0, atol=1e-5)
    assert (batch - images).abs().amax() <= EPS + 1e-6


def detections_above(objective, images: Tensor, score_threshold: float = 0.5) -> list[dict[str, Tensor]]:
    with torch.no_grad():
        return confident(objective.predict(objective.forward(images)), score_threshold)


def label_scores(objective, images: Tensor, goal: list[dict[str, Tensor]]) -> float:
    """Summed over the (box, label) pairs of ``goal``: the highest score of a detection of that label at IoU
    >= 0.5 with the box (0 where there is none)."""
    with torch.no_grad():
        found = objective.predict(objective.forward(images))
    total = 0.0
    for detections, wanted in zip(found, goal, strict=True):
        if len(detections["scores"]):
            overlap = box_iou(wanted["boxes"], detections["boxes"]) >= 0.5
            same = wanted["labels"][:, None] == detections["labels"][None, :]
            total += (detections["scores"][None, :] * (overlap & same)).max(dim=1).values.sum().item()
    return total


def map_50(objective, images: Tensor, target: list[dict[str, Tensor]]) -> float:
    average_precision = MeanAveragePrecision(iou_type="bbox")
    with torch.no_grad():
        average_precision.update(objective.predict(objective.forward(images)), target)
    return average_precision.compute()["map_50"].item()


@pytest.mark.slow
def test_each_tog_attack_reaches_its_own_goal_on_a_trained_detector(fitted_detector):
    """At the reference settings (8/255, 10 steps of 2/255) on the 4 test frames the fitted detector finds most
    in (it learned: mAP@0.5 about 0.5; 12 detections above 0.5 on these frames): vanishing removes most of them
    (12 -> 2 measured), fabrication adds at least one per frame (12 -> 19: a detector that learned keeps its
    confident detections, so they grow by half rather than double), mislabeling raises the designed labels'
    scores at the detected boxes and lowers the detected ones', untargeted cuts mAP@0.5 by a quarter or more
    (0.54 -> 0.26 measured)."""
    module, datamodule = fitted_detector
    datamodule.setup("test")
    batches = list(datamodule.test_dataloader())
    objective = module.objective()
    images = torch.cat([batch["image"] for batch in batches])
    counts = torch.tensor([len(found["labels"]) for found in detections_above(objective, images)])
    chosen = counts.argsort(descending=True, stable=True)[:4]
    images, target = images[chosen], [sum((b["target"] for b in batches), [])[i] for i in chosen]
    clean = int(counts[chosen].sum())
    assert clean >= len(images)

    vanished = TOGVanishing()(objective, images, target).adv_images
    assert sum(len(found["labels"]) for found in detections_above(objective, vanished)) < clean / 2
    fabricated = TOGFabrication()(objective, images, target).adv_images
    assert sum(len(found["labels"]) for found in detections_above(objective, fabricated)) > clean + len(images)

    mislabeling = TOGMislabeling()
    goal = mislabeling.designed_target(objective, images, target)
    detected = detections_above(objective, images)
    mislabelled = mislabeling(objective, images, target).adv_images
    assert label_scores(objective, mislabelled, goal) > label_scores(objective, images, goal)
    assert label_scores(objective, mislabelled, detected) < label_scores(objective, images, detected)

    untargeted = TOGUntargeted()(objective, images, target).adv_images
    assert map_50(objective, untargeted, target) < 0.75 * map_50(objective, images, target)
