"""HD95 (MONAI's definition) and segmentation scores split by structure size."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from callbacks import surface_distance
from callbacks.metrics import SIZE_GROUPS, SegmentationScores, size_groups
from callbacks.surface_distance import hausdorff95, image_hausdorff95
from callbacks.task_scores import SegmentationTaskScores


def point_mask(row: int, column: int, size: int = 16) -> np.ndarray:
    mask = np.zeros((size, size), dtype=bool)
    mask[row, column] = True
    return mask


def brute_force_hd95(predicted: np.ndarray, truth: np.ndarray) -> float:
    """HD95 from all pairwise edge distances, edges by a 4-neighbour min filter (torch), no scipy."""

    def edge_points(mask: np.ndarray) -> torch.Tensor:
        tensor = torch.from_numpy(mask).float()[None, None]
        cross = torch.tensor([[0.0, 1, 0], [1, 1, 1], [0, 1, 0]])[None, None]
        eroded = F.conv2d(tensor, cross, padding=1)[0, 0] == 5
        return torch.nonzero(torch.from_numpy(mask) & ~eroded).double()

    distances = torch.cdist(edge_points(predicted), edge_points(truth))
    forward, backward = distances.min(dim=1).values.numpy(), distances.min(dim=0).values.numpy()
    return max(np.percentile(forward, 95), np.percentile(backward, 95))


def test_hd95_of_single_pixels_is_their_distance() -> None:
    assert hausdorff95(point_mask(2, 3), point_mask(5, 7)) == pytest.approx(5.0)  # a 3-4-5 triangle


def test_hd95_agrees_with_all_pairwise_edge_distances() -> None:
    rng = np.random.default_rng(0)
    for _ in range(5):
        blobs = rng.random((2, 24, 24)) < 0.5
        predicted, truth = (np.kron(blob[:12, :12], np.ones((2, 2))).astype(bool) for blob in blobs)
        assert hausdorff95(predicted, truth) == pytest.approx(brute_force_hd95(predicted, truth))


def test_hd95_of_empty_masks_follows_the_documented_convention() -> None:
    empty, full = np.zeros((6, 8), dtype=bool), np.ones((6, 8), dtype=bool)
    assert hausdorff95(empty, empty) == 0.0
    assert hausdorff95(empty, full) == hausdorff95(full, empty) == pytest.approx(10.0)  # the 6 x 8 diagonal
    with pytest.raises(ValueError, match="predicted and truth"):
        image_hausdorff95(torch.zeros(2, 4, 4), torch.zeros(2, 4, 5))


def size_batch() -> tuple[torch.Tensor, torch.Tensor]:
    """Six 8x8 images with ground-truth squares of sides 1..6; predictions miss one column of each."""
    truth = torch.zeros(6, 8, 8, dtype=torch.bool)
    predicted = torch.zeros_like(truth)
    for index in range(6):
        side = index + 1
        truth[index, :side, :side] = True
        predicted[index, :side, : side - 1] = True
    return predicted, truth


def test_scores_by_size_pool_the_images_of_each_tercile() -> None:
    predicted, truth = size_batch()
    scores = SegmentationScores()
    scores.update(predicted, truth)
    values = scores.compute()
    for group, sides in zip(SIZE_GROUPS, ((1, 2), (3, 4), (5, 6)), strict=True):
        tp = sum(side * (side - 1) for side in sides)
        union = sum(side * side for side in sides)
        assert values[f"jaccard_{group}"] == pytest.approx(tp / union)
        assert values[f"dice_{group}"] == pytest.approx(2 * tp / (tp + union))
    assert values["jaccard_small"] < values["jaccard_medium"] < values["jaccard_large"]
    expected = image_hausdorff95(predicted, truth).mean()
    assert values["hd95"] == pytest.approx(float(expected))


def test_size_groups_do_not_depend_on_image_order_or_batching() -> None:
    predicted, truth = size_batch()
    whole, split = SegmentationScores(), SegmentationScores()
    whole.update(predicted, truth)
    order = torch.tensor([5, 0, 3, 1, 4, 2])
    split.update(predicted[order[:2]], truth[order[:2]])
    split.update(predicted[order[2:]], truth[order[2:]])
    expected, found = whole.compute(), split.compute()
    assert set(found) == set(expected)
    for name, value in expected.items():
        assert float(found[name]) == pytest.approx(float(value)), name
    assert size_groups(torch.tensor([4.0, 4.0, 4.0])).tolist() == [0, 0, 0]  # ties share a group


class MaskObjective:
    """Outputs are the predicted masks themselves."""

    def predict(self, outputs: torch.Tensor) -> torch.Tensor:
        return outputs.long()


def test_per_image_hd95_parts_average_to_the_reported_hd95() -> None:
    predicted, truth = size_batch()
    task = SegmentationTaskScores()
    task.update_scores(MaskObjective(), predicted, truth.long())
    numerators, denominators = task.per_image_parts(MaskObjective(), predicted, truth.long())["hd95"]
    assert float(numerators.sum() / denominators.sum()) == pytest.approx(float(task.compute_scores()["hd95"]))
    assert math.isfinite(float(task.compute_scores()["hd95_small"]))


def test_each_image_hd95_is_computed_once_per_batch_and_the_parts_match_fresh_values(monkeypatch) -> None:
    predicted, truth = size_batch()
    expected_hd95 = image_hausdorff95(predicted, truth)
    calls = []
    distance = surface_distance.hausdorff95

    def counted(*masks: np.ndarray) -> float:
        calls.append(masks)
        return distance(*masks)

    monkeypatch.setattr(surface_distance, "hausdorff95", counted)
    task = SegmentationTaskScores()
    task.update_scores(MaskObjective(), predicted, truth.long())
    parts = task.per_image_parts(MaskObjective(), predicted, truth.long())
    assert len(calls) == len(predicted)
    torch.testing.assert_close(parts["hd95"][0], expected_hd95)
    tp, union, sizes, wrong = (
        mask.flatten(1).sum(dim=1).double()
        for mask in (predicted & truth, predicted | truth, predicted.long() + truth.long(), predicted ^ truth)
    )
    torch.testing.assert_close(parts["jaccard"], (tp, union))
    torch.testing.assert_close(parts["dice"], (2 * tp, sizes))
    torch.testing.assert_close(parts["pixel_accuracy"], (64 - wrong, torch.full_like(wrong, 64)))
    with pytest.raises(RuntimeError, match="call that first, on the same batch"):
        task.per_image_parts(MaskObjective(), predicted[:2], truth[:2].long())
    with pytest.raises(RuntimeError, match="call that first"):
        SegmentationTaskScores().per_image_parts(MaskObjective(), predicted, truth.long())


@pytest.mark.slow
def test_attack_raises_hd95_of_a_trained_segmenter(fitted_segmenter):
    from attacks.gradient import PGD
    from callbacks.attack_eval import AdversarialEvaluation
    from tests.callbacks.test_attack_eval import evaluate

    module, datamodule = fitted_segmenter
    callback = AdversarialEvaluation({"pgd": (lambda eps: PGD(eps=eps, steps=5), [0.05])})
    results = evaluate(module, datamodule, callback, limit_test_batches=1)
    assert results["adv/pgd/0.05/hd95"] > results["clean/hd95"]
    for prefix in ("clean", "adv/pgd/0.05"):
        low, value, high = (results[f"{prefix}/hd95{end}"] for end in ("_ci_low", "", "_ci_high"))
        assert low <= value <= high, prefix
        assert all(f"{prefix}/jaccard_{group}" in results for group in SIZE_GROUPS)
