"""DetectionEffects: disappearance, hallucination, misclassification and true-positive counts on hand-made
boxes, against a per-object reading of the definitions, exact when merged across ranks, in the detection
score set."""

from __future__ import annotations

import statistics

import pytest
import torch
from torch import Tensor
from torchvision.ops import box_iou

from attacks import FGSM, TOGVanishing
from callbacks.attack_eval import AdversarialEvaluation
from callbacks.intervals import wilson_interval
from callbacks.metrics import DetectionEffects, detection_effects
from callbacks.task_scores import DetectionTaskScores
from datamodules import SyntheticEndoscopyDataModule
from lightning_modules.detector import DetectorModule
from tests.callbacks.test_attack_eval import evaluate


def detections(boxes: list[list[float]], labels: list[int], scores: list[float] | None = None) -> dict[str, Tensor]:
    found = {"boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4), "labels": torch.tensor(labels)}
    if scores is not None:
        found["scores"] = torch.tensor(scores)
    return found


# three objects: A found with its label, B found with a wrong label, C missed (only a low-score box on it);
# one confident box far from every object (a hallucination) and a second, duplicate right box on A
TRUTH = detections([[0, 0, 10, 10], [20, 20, 40, 40], [50, 0, 60, 10]], [1, 2, 3])
PREDICTION = detections(
    [[0, 0, 10, 10], [1, 0, 10, 10], [20, 20, 40, 40], [50, 0, 60, 10], [0, 50, 10, 60]],
    [1, 1, 3, 3, 2],
    [0.9, 0.8, 0.7, 0.4, 0.6],
)
EMPTY_TRUTH = detections([], [])


def test_one_object_found_one_mislabelled_one_missed_and_one_hallucinated():
    counts = detection_effects(PREDICTION, TRUTH, score_threshold=0.5, iou_threshold=0.5)
    assert {name: int(value) for name, value in counts.items()} == {
        "objects": 3,
        "true_positives": 1,
        "misclassified": 1,
        "disappeared": 1,
        "detections": 4,
        "hallucinations": 1,
    }


def test_the_rates_pool_objects_and_the_per_image_counts_average_images():
    metric = DetectionEffects()
    metric.update([PREDICTION, detections([[5, 5, 9, 9]], [2], [0.95])], [TRUTH, EMPTY_TRUTH])
    scores = metric.compute()
    third = torch.tensor(1.0), torch.tensor(3.0)
    for name in ("true_positive_rate", "misclassification_rate", "disappearance_rate"):
        assert scores[name].item() == pytest.approx(1 / 3)
        low, high = wilson_interval(*third)
        assert scores[f"{name}_ci_low"].item() == pytest.approx(low.item())
        assert scores[f"{name}_ci_high"].item() == pytest.approx(high.item())
    assert scores["hallucinations_per_image"].item() == pytest.approx(2 / 2)  # the far box and the box with no object
    assert scores["detections_per_image"].item() == pytest.approx(5 / 2)


def test_scores_must_exceed_the_threshold_and_iou_may_equal_it():
    truth = detections([[0, 0, 10, 10]], [1])
    half = detections([[0, 0, 10, 5]], [1], [0.5])  # IoU exactly 0.5, score exactly at the threshold
    assert int(detection_effects(half, truth, 0.5, 0.5)["disappeared"]) == 1
    assert int(detection_effects(half, truth, 0.49, 0.5)["true_positives"]) == 1
    assert int(detection_effects(half, truth, 0.49, 0.51)["disappeared"]) == 1


def test_a_right_label_takes_precedence_so_the_three_rates_partition_the_objects():
    truth = detections([[0, 0, 10, 10]], [1])
    both = detections([[0, 0, 10, 10], [0, 0, 10, 10]], [2, 1], [0.9, 0.8])
    counts = detection_effects(both, truth, 0.5, 0.5)
    assert (int(counts["true_positives"]), int(counts["misclassified"]), int(counts["disappeared"])) == (1, 0, 0)


def per_object_reading(prediction: dict[str, Tensor], truth: dict[str, Tensor]) -> tuple[int, int, int, int]:
    """The definitions read object by object and box by box, with Python loops."""
    confident = [i for i in range(len(prediction["scores"])) if prediction["scores"][i] > 0.5]
    iou = box_iou(truth["boxes"], prediction["boxes"]) if len(truth["boxes"]) else torch.zeros(0, 0)
    right = wrong = gone = 0
    for g in range(len(truth["labels"])):
        hits = [i for i in confident if iou[g, i] >= 0.5]
        if any(prediction["labels"][i] == truth["labels"][g] for i in hits):
            right += 1
        elif hits:
            wrong += 1
        else:
            gone += 1
    hallucinated = sum(all(iou[g, i] < 0.5 for g in range(len(truth["labels"]))) for i in confident)
    return right, wrong, gone, hallucinated


def random_boxes(count: int, generator: torch.Generator) -> Tensor:
    corner = torch.randint(0, 40, (count, 2), generator=generator).float()
    size = torch.randint(4, 24, (count, 2), generator=generator).float()
    return torch.cat([corner, corner + size], dim=1)


def test_counts_agree_with_a_per_object_reading_on_random_boxes():
    generator = torch.Generator().manual_seed(0)
    for _ in range(50):
        objects, found = (int(n) for n in torch.randint(0, 6, (2,), generator=generator))
        truth = {
            "boxes": random_boxes(objects, generator),
            "labels": torch.randint(1, 4, (objects,), generator=generator),
        }
        # predictions jitter some object boxes (so matches happen) and add free ones
        jittered = truth["boxes"] + torch.randint(-3, 4, truth["boxes"].shape, generator=generator)
        boxes = torch.cat([jittered, random_boxes(found, generator)])
        prediction = {
            "boxes": boxes,
            "labels": torch.randint(1, 4, (len(boxes),), generator=generator),
            "scores": torch.rand(len(boxes), generator=generator),
        }
        counts = detection_effects(prediction, truth, 0.5, 0.5)
        expected = per_object_reading(prediction, truth)
        names = ("true_positives", "misclassified", "disappeared", "hallucinations")
        assert tuple(int(counts[name]) for name in names) == expected


def test_states_merged_from_two_ranks_give_the_one_process_scores():
    generator = torch.Generator().manual_seed(1)
    images = []
    for count in (3, 0, 2, 4, 1):
        truth = {"boxes": random_boxes(count, generator), "labels": torch.randint(1, 4, (count,), generator=generator)}
        boxes = torch.cat([truth["boxes"] + 1, random_boxes(2, generator)])
        prediction = {
            "boxes": boxes,
            "labels": torch.cat([truth["labels"], torch.randint(1, 4, (2,), generator=generator)]),
            "scores": torch.rand(len(boxes), generator=generator),
        }
        images.append((prediction, truth))
    whole, first, second = DetectionEffects(), DetectionEffects(), DetectionEffects()
    whole.update(*map(list, zip(*images, strict=True)))
    first.update(*map(list, zip(*images[:2], strict=True)))
    second.update(*map(list, zip(*images[2:], strict=True)))
    first.merge_state(second)
    merged, expected = first.compute(), whole.compute()
    assert {name: value.item() for name, value in merged.items()} == {
        name: value.item() for name, value in expected.items()
    }
    assert expected["true_positive_rate"] > 0 and expected["hallucinations_per_image"] > 0


@pytest.mark.parametrize(
    ("name", "value"), [("score_threshold", 1.5), ("score_threshold", -0.1), ("iou_threshold", 0.0)]
)
def test_thresholds_outside_their_range_fail_naming_them(name, value):
    with pytest.raises(ValueError, match=name):
        DetectionEffects(**{name: value})


class GivenDetections:
    """An objective whose outputs are already its detections."""

    def predict(self, outputs: list[dict[str, Tensor]]) -> list[dict[str, Tensor]]:
        return outputs


def test_detection_scores_report_the_effects_beside_map():
    scores = DetectionTaskScores(score_threshold=0.5)
    scores.update_scores(GivenDetections(), [PREDICTION], [TRUTH])
    values = scores.compute_scores()
    assert {"map", "map_50", "mean_iou"} <= values.keys()
    assert values["disappearance_rate"].item() == pytest.approx(1 / 3)
    assert values["hallucinations_per_image"].item() == 1.0
    assert values["disappearance_rate_ci_low"] < values["disappearance_rate"] < values["disappearance_rate_ci_high"]
    stricter = DetectionTaskScores(score_threshold=0.75)
    stricter.update_scores(GivenDetections(), [PREDICTION], [TRUTH])
    assert stricter.compute_scores()["disappearance_rate"].item() == pytest.approx(2 / 3)


def test_per_image_parts_give_each_images_hallucinations_and_detections():
    scores = DetectionTaskScores()
    with pytest.raises(RuntimeError, match="call that first"):
        scores.per_image_parts(GivenDetections(), [PREDICTION], [TRUTH])
    scores.update_scores(GivenDetections(), [PREDICTION, PREDICTION], [TRUTH, EMPTY_TRUTH])
    parts = scores.per_image_parts(GivenDetections(), [PREDICTION, PREDICTION], [TRUTH, EMPTY_TRUTH])
    assert set(parts) == set(scores.mean_metrics)
    hallucinations, ones = parts["hallucinations_per_image"]
    assert hallucinations.tolist() == [1.0, 4.0] and ones.tolist() == [1.0, 1.0]
    assert parts["detections_per_image"][0].tolist() == [4.0, 4.0]


def test_each_images_score_is_its_recall_and_an_image_without_objects_scores_one():
    scores = DetectionTaskScores()
    assert scores.per_sample_metric == "image_recall"
    predictions = [PREDICTION, PREDICTION, detections([], [], [])]
    scores.update_scores(GivenDetections(), predictions, [TRUTH, EMPTY_TRUTH, TRUTH])
    recall = scores.per_sample(GivenDetections(), predictions, [TRUTH, EMPTY_TRUTH, TRUTH])
    assert recall.tolist() == pytest.approx([1 / 3, 1.0, 0.0])  # A of A, B, C; nothing to find; all missed


@pytest.mark.parametrize("architecture", ["faster_rcnn", "retinanet"])
def test_the_evaluation_reports_the_effects_of_a_tog_attack_on_either_detector(architecture):
    datamodule = SyntheticEndoscopyDataModule(num_samples=16, size=64, seed=0, batch_size=4)
    torch.manual_seed(0)
    module = DetectorModule(
        "resnet18",
        num_classes=datamodule.num_classes,
        min_size=64,
        max_size=64,
        proposals_per_image=20,
        architecture=architecture,
    )
    callback = AdversarialEvaluation({"tog_vanishing": (lambda eps: TOGVanishing(eps=eps, steps=1), [8 / 255]),
                                      "fgsm": (lambda eps: FGSM(eps=eps), [8 / 255])})
    results = evaluate(module, datamodule, callback, limit_test_batches=1)
    per_attack = [callback.sample_scores[key] for key in ("fgsm/8_255", "tog_vanishing/8_255")]
    lowest = [min(scores[image] for scores in per_attack) for image in per_attack[0]]  # each image's lowest recall
    assert results["adv/worst/8_255/image_recall"] == pytest.approx(statistics.fmean(lowest))
    for prefix in ("clean", "adv/tog_vanishing/8_255"):
        assert 0 <= results[f"{prefix}/disappearance_rate"] <= 1
        assert results[f"{prefix}/disappearance_rate"] + results[f"{prefix}/true_positive_rate"] + results[
            f"{prefix}/misclassification_rate"
        ] == pytest.approx(1.0)
        low, value, high = (results[f"{prefix}/hallucinations_per_image{end}"] for end in ("_ci_low", "", "_ci_high"))
        assert low <= value <= high
