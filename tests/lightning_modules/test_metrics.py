"""MatchedBoxIoU: greedy same-label matching at IoU >= 0.5, mean IoU of the matches, exact reduction."""

import pytest
import torch

from lightning_modules.metrics import MatchedBoxIoU, greedy_matched_iou


def boxes(*rows):
    return torch.tensor(rows, dtype=torch.float32).reshape(-1, 4)


def prediction(box_rows, scores, labels):
    return {"boxes": boxes(*box_rows), "scores": torch.tensor(scores), "labels": torch.tensor(labels)}


def truth(box_rows, labels):
    return {"boxes": boxes(*box_rows), "labels": torch.tensor(labels)}


def test_greedy_matching_follows_scores_labels_and_the_threshold():
    gt = boxes([0, 0, 10, 10], [20, 20, 30, 30])
    predicted = boxes(
        [0, 0, 10, 8],  # IoU 0.8 with gt 0
        [0, 0, 10, 10],  # IoU 1.0 with gt 0, but lower score: gt 0 is taken
        [20, 20, 30, 24],  # IoU 0.4 with gt 1: below the threshold
        [20, 20, 30, 30],  # perfect box with the wrong label
    )
    ious = greedy_matched_iou(
        predicted, torch.tensor([0.9, 0.8, 0.7, 0.6]), torch.tensor([1, 1, 2, 3]), gt, torch.tensor([1, 2]), 0.5
    )
    torch.testing.assert_close(ious, torch.tensor([0.8]))


def test_a_lower_scored_prediction_takes_the_next_free_box():
    gt = boxes([0, 0, 10, 10], [0, 0, 10, 9])
    ious = greedy_matched_iou(
        boxes([0, 0, 10, 10], [0, 0, 10, 10]),
        torch.tensor([0.5, 0.9]),
        torch.tensor([1, 1]),
        gt,
        torch.tensor([1, 1]),
        0.5,
    )
    torch.testing.assert_close(ious, torch.tensor([1.0, 0.9]))


def test_mean_iou_over_all_matches_and_zero_without_any():
    metric = MatchedBoxIoU()
    metric.update([prediction([[0, 0, 10, 10]], [0.9], [1])], [truth([[0, 0, 10, 10]], [2])])
    assert metric.compute() == 0
    metric.update([prediction([[0, 0, 10, 10]], [0.9], [1])], [truth([[0, 0, 10, 10]], [1])])
    metric.update(
        [prediction([[0, 0, 10, 5], [50, 50, 60, 60]], [0.9, 0.8], [2, 2])],
        [truth([[0, 0, 10, 10], [0, 0, 4, 4]], [2, 2])],
    )
    metric.update([prediction([], [], [])], [truth([[0, 0, 1, 1]], [1])])
    assert metric.compute().item() == pytest.approx((1.0 + 0.5) / 2)


def test_summed_states_of_split_updates_give_the_single_process_value():
    pairs = [
        ([prediction([[0, 0, 10, 8]], [0.9], [1])], [truth([[0, 0, 10, 10]], [1])]),
        (
            [prediction([[0, 0, 10, 6], [5, 5, 9, 9]], [0.8, 0.3], [4, 4])],
            [truth([[0, 0, 10, 10], [5, 5, 9, 9]], [4, 4])],
        ),
        ([prediction([[1, 1, 9, 9]], [0.5], [2])], [truth([[0, 0, 10, 10]], [2])]),
    ]
    whole, first, second = MatchedBoxIoU(), MatchedBoxIoU(), MatchedBoxIoU()
    for index, pair in enumerate(pairs):
        whole.update(*pair)
        (first if index < 2 else second).update(*pair)
    first.iou_sum += second.iou_sum  # what dist_reduce_fx="sum" does across ranks
    first.matched += second.matched
    torch.testing.assert_close(first.compute(), whole.compute())
    assert whole.matched.item() == 4


def test_threshold_is_checked():
    with pytest.raises(ValueError, match="iou_threshold"):
        MatchedBoxIoU(iou_threshold=0.0)
