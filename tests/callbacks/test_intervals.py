"""95% Wilson intervals on every reported proportion, from the metrics' sum states (so DDP-exact)."""

from __future__ import annotations

import math

import pytest
import torch

from callbacks.intervals import proportion, wilson_interval
from callbacks.metrics import AttackSuccess, ClassificationScores


def test_wilson_closed_form():
    # Wilson's interval for 8 of 10 (Newcombe 1998, Table I, method 3: 0.4902 to 0.9433)
    low, high = wilson_interval(torch.tensor(8.0), torch.tensor(10.0))
    assert (round(float(low), 4), round(float(high), 4)) == (0.4902, 0.9433)
    low, high = wilson_interval(torch.tensor(0.0), torch.tensor(25.0))  # never outside [0, 1], 0 inside
    assert float(low) == pytest.approx(0.0, abs=1e-12) and 0.1 < float(high) < 0.15
    low, high = wilson_interval(torch.tensor(3.0), torch.tensor(0.0))
    assert math.isnan(low) and math.isnan(high)


@pytest.mark.parametrize("trials", [10, 100, 1000])
def test_interval_holds_the_estimate_and_narrows_with_samples(trials):
    values = proportion("accuracy", torch.tensor(0.4 * trials), torch.tensor(float(trials)))
    assert values["accuracy_ci_low"] < values["accuracy"] < values["accuracy_ci_high"]
    assert float(values["accuracy"]) == pytest.approx(0.4)
    width = float(values["accuracy_ci_high"] - values["accuracy_ci_low"])
    assert width == pytest.approx(2 * 1.96 * math.sqrt(0.4 * 0.6 / trials), rel=0.15)


def test_classification_metrics_carry_intervals_from_their_counts():
    scores, success = ClassificationScores(3), AttackSuccess()
    logits = torch.eye(3)[torch.tensor([0, 1, 2, 0, 1, 2, 0, 0])]
    target = torch.tensor([0, 1, 2, 1, 1, 2, 2, 0])
    scores.update(logits, target)
    success.update(logits.argmax(1), torch.zeros(8, dtype=torch.long), target, None)
    values = scores.compute() | success.compute()
    low, high = wilson_interval(torch.tensor(6.0), torch.tensor(8.0))
    assert values["accuracy"] == pytest.approx(6 / 8)
    assert (values["accuracy_ci_low"], values["accuracy_ci_high"]) == (low, high)
    # 6 clean-correct samples, 4 of them (the non-zero labels) pushed to class 0
    low, high = wilson_interval(torch.tensor(4.0), torch.tensor(6.0))
    assert values["success_rate"] == pytest.approx(4 / 6) and values["success_rate_ci_high"] == high
    assert {"fpr_ci_low", "fpr_ci_high"} <= set(values)
