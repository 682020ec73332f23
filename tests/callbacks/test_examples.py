"""Example triplets: detections drawn and counted only when confident, targets always."""

import torch

from callbacks.examples import amplified, describe, draw


def test_detections_below_the_shown_score_are_neither_counted_nor_drawn():
    image = torch.zeros(3, 32, 32)
    boxes = torch.tensor([[2.0, 2.0, 10.0, 10.0], [15.0, 15.0, 30.0, 30.0]])
    prediction = {"boxes": boxes, "labels": torch.tensor([1, 2]), "scores": torch.tensor([0.9, 0.1])}
    target = {"boxes": boxes, "labels": torch.tensor([1, 2])}
    assert describe(prediction) == "1 boxes" and describe(target) == "2 boxes"
    drawn = draw(image, prediction)
    assert drawn[:, 2, 2:11].any() and not drawn[:, 15, 15:31].any()
    assert draw(image, target)[:, 15, 15:31].any()


def test_amplified_perturbation_spans_the_range_around_mid_grey():
    perturbation = torch.tensor([[[-0.01, 0.0, 0.02]]])
    assert torch.allclose(amplified(perturbation), torch.tensor([[[0.25, 0.5, 1.0]]]))
