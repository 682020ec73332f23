"""TOG: targeted adversarial objectness gradient attacks on object detectors (Chow, Liu, Loper, Wei et al.,
"Adversarial objectness gradient attacks in real-time object detection systems", TPS-ISA 2020; arXiv
2004.04320, "TOG: Targeted adversarial objectness gradient attacks on real-time object detection systems").

Each TOG attack iterates signed gradient steps on the detector's loss L(x'; O) towards a designed set of
detections O, projected onto the Linf eps-ball and [0, 1]:

    vanishing     x'_{t+1} = P(x'_t - alpha sign grad L_obj(x'_t; {}))     every object vanishes
    fabrication   x'_{t+1} = P(x'_t + alpha sign grad L_obj(x'_t; {}))     objects appear everywhere
    mislabeling   x'_{t+1} = P(x'_t - alpha sign grad L(x'_t; O*(x)))      the clean detections, relabelled
    untargeted    x'_{t+1} = P(x'_t + alpha sign grad L(x'_t; O(x)))       away from the clean detections

Towards the empty set {} every box and class term of a detection loss is zero, so the objective's loss is the
objectness loss L_obj there (Faster R-CNN: RPN objectness and ROI background terms; RetinaNet: the focal loss
of every anchor towards the background). Each attack is therefore ``PGD`` (``attacks.gradient``) with a
designed target: "given" descends the loss towards it, "untargeted" ascends it. Defaults are the reference
implementation's: eps 8/255, 10 steps of 2/255 (PGD's 2.5 eps / steps), a uniform random start.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from attacks.base import AttackResult, Objective, SampleRandom, check_fraction
from attacks.gradient import PGD

Detections = list[dict[str, Tensor]]
MISLABELING_MODES = ("ml", "ll")
SCORE_THRESHOLD = 0.5  # the clean detections TOG-mislabeling and TOG-untargeted attack score above it


def no_objects(images: Tensor) -> Detections:
    """The empty detection set {} of every image."""
    empty = {"boxes": images.new_zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long, device=images.device)}
    return [dict(empty) for _ in images]


def confident(detections: Detections, score_threshold: float) -> Detections:
    """The boxes and labels of the ``detections`` (as ``objective.predict`` gives them) scoring above
    ``score_threshold``: O(x) when the detections are the clean images'."""
    kept = [found["scores"] > score_threshold for found in detections]
    return [
        {"boxes": found["boxes"][keep], "labels": found["labels"][keep]}
        for found, keep in zip(detections, kept, strict=True)
    ]


class TOGAttack(PGD):
    """A TOG attack: ``PGD`` on the objective's loss towards ``designed_target`` (see the module docstring)."""

    name = "tog"
    defaults = {"eps": 8 / 255}
    fixed = {"early_stop": False}

    def designed_target(self, objective: Objective, images: Tensor, target: Any) -> Detections:
        raise NotImplementedError

    def run(self, objective: Objective, images: Tensor, target: Any, random: SampleRandom) -> AttackResult:
        return super().run(objective, images, self.designed_target(objective, images, target), random)


class TOGVanishing(TOGAttack):
    """TOG-vanishing: descend the objectness loss towards no objects, so every detection vanishes."""

    name = "tog_vanishing"
    fixed = {"target_mode": "given"}

    def designed_target(self, objective: Objective, images: Tensor, target: Any) -> Detections:
        return no_objects(images)


class TOGFabrication(TOGAttack):
    """TOG-fabrication: ascend the objectness loss towards no objects, so objects appear everywhere."""

    name = "tog_fabrication"
    fixed = {"target_mode": "untargeted"}

    def designed_target(self, objective: Objective, images: Tensor, target: Any) -> Detections:
        return no_objects(images)


class TOGOnDetections(TOGAttack):
    """A TOG attack whose designed target derives from the clean detections scoring above ``score_threshold``."""

    def __init__(self, score_threshold: float = SCORE_THRESHOLD, **options: Any) -> None:
        check_fraction("score_threshold", score_threshold, allow_zero=True)
        super().__init__(**options)
        self.score_threshold = float(score_threshold)


class TOGUntargeted(TOGOnDetections):
    """TOG-untargeted: ascend the full detection loss towards the clean detections O(x) scoring above
    ``score_threshold`` (towards {} where there are none, as fabrication)."""

    name = "tog_untargeted"
    fixed = {"target_mode": "untargeted"}

    def designed_target(self, objective: Objective, images: Tensor, target: Any) -> Detections:
        with torch.no_grad():
            return confident(objective.predict(objective.forward(images)), self.score_threshold)


class TOGMislabeling(TOGOnDetections):
    """TOG-mislabeling: descend the full detection loss towards O*(x), the clean detections scoring above
    ``score_threshold`` with each label replaced by the most likely other class (``mode`` "ml") or the least
    likely one ("ll"), read from the class probabilities the detector gives the detection (see
    ``relabelled``). Needs a detector of at least two classes.
    """

    name = "tog_mislabeling"
    fixed = {"target_mode": "given"}

    def __init__(self, mode: str = "ml", **options: Any) -> None:
        if mode not in MISLABELING_MODES:
            raise ValueError(f"mode must be one of {MISLABELING_MODES}, got {mode!r}")
        super().__init__(**options)
        self.mode = mode

    def designed_target(self, objective: Objective, images: Tensor, target: Any) -> Detections:
        with torch.no_grad():
            outputs = objective.forward(images)
            detections = confident(objective.predict(outputs), self.score_threshold)
            labels = relabelled(objective, outputs, detections, self.mode)
        return [{"boxes": found["boxes"], "labels": new} for found, new in zip(detections, labels, strict=True)]


def detection_probabilities(objective: Objective, outputs: Any, detections: Detections, index: int) -> Tensor:
    """(B, K + 1) class probabilities the detector gives the ``index``-th detection of each image (rows of images
    with fewer detections are meaningless): the softmax of ``objective.logits`` at the position (proposal or
    anchor) that ``dense_target`` matches to the detection's box and that is most confident in its label,
    i.e. the position that made the detection; any valid position when none is matched."""
    probabilities = objective.logits(outputs).softmax(dim=1).flatten(2)
    single = [
        {"boxes": found["boxes"][index : index + 1], "labels": found["labels"][index : index + 1]}
        for found in detections
    ]
    dense = objective.dense_target(outputs, single).flatten(1)
    matched = dense > 0
    candidates = torch.where(matched.any(dim=1, keepdim=True), matched, dense >= 0)
    label = torch.tensor([int(s["labels"][0]) if len(s["labels"]) else 0 for s in single], device=dense.device)
    confidence = probabilities.gather(1, label.view(-1, 1, 1).expand(-1, 1, probabilities.shape[2])).squeeze(1)
    source = confidence.masked_fill(~candidates, -1.0).argmax(dim=1)
    return probabilities[torch.arange(len(source), device=source.device), :, source]


def relabelled(objective: Objective, outputs: Any, detections: Detections, mode: str) -> list[Tensor]:
    """Each image's detection labels replaced by the most likely ("ml") or least likely ("ll") class other than
    the background (column 0) and the detected label, by ``detection_probabilities``."""
    classes = objective.logits(outputs).shape[1]
    if classes < 3:
        raise ValueError(f"tog_mislabeling needs a detector of at least 2 classes, got {classes - 1}")
    labels = [found["labels"].clone() for found in detections]
    for index in range(max((len(found) for found in labels), default=0)):
        probabilities = detection_probabilities(objective, outputs, detections, index)
        for image, found in enumerate(labels):
            if index >= len(found):
                continue
            excluded = torch.zeros(classes, dtype=torch.bool, device=probabilities.device)
            excluded[[0, int(found[index])]] = True
            if mode == "ml":
                found[index] = probabilities[image].masked_fill(excluded, -1.0).argmax()
            else:
                found[index] = probabilities[image].masked_fill(excluded, 2.0).argmin()
    return labels
