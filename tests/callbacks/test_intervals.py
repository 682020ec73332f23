"""95% Wilson intervals on every reported proportion, from the metrics' sum states (so DDP-exact), and 95%
bootstrap intervals on every mean over images, independent of batch order and process split."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor

from callbacks.bootstrap import BootstrapIntervals, bootstrap_interval, mean_parts, sample_keys
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


def test_bootstrap_of_a_proportion_matches_wilson():
    """For 0/1 values the bootstrap's percentile interval approaches the Wilson interval (n = 400)."""
    values = (torch.arange(400) % 10 < 3).double()  # 120 of 400
    low, high = bootstrap_interval(*mean_parts(values))
    wilson_low, wilson_high = wilson_interval(torch.tensor(120.0), torch.tensor(400.0))
    assert low == pytest.approx(float(wilson_low), abs=0.01) and high == pytest.approx(float(wilson_high), abs=0.01)


def test_bootstrap_of_a_pooled_ratio_holds_it_and_skips_undefined_images():
    generator = torch.Generator().manual_seed(0)
    overlap = torch.randint(0, 50, (60,), generator=generator).double()
    union = overlap + torch.randint(1, 30, (60,), generator=generator).double()
    low, high = bootstrap_interval(overlap, union)
    assert low < float(overlap.sum() / union.sum()) < high
    with_nan = bootstrap_interval(torch.cat([overlap, torch.tensor([float("nan")])]), torch.cat([union, torch.ones(1)]))
    assert with_nan == (low, high)
    assert all(math.isnan(bound) for bound in bootstrap_interval(torch.empty(0), torch.empty(0)))


def test_bootstrap_intervals_do_not_depend_on_batch_order_or_split():
    """Images fed in any order, or split over two metrics whose states are merged (as DDP's cat gathers them),
    give the interval of one pass in order: the values are ordered by sample key before resampling."""
    ids = [f"img{i}" for i in range(50)]
    values = torch.linspace(0, 1, 50).double() ** 2

    def fed(order: list[int], parts: int = 1) -> dict[str, Tensor]:
        metrics = [BootstrapIntervals(["ssim"]) for _ in range(parts)]
        for position, index in enumerate(order):
            metrics[position % parts].update(sample_keys([ids[index]]), {"ssim": mean_parts(values[index : index + 1])})
        merged = metrics[0]
        for other in metrics[1:]:
            for state in ("keys", "numerators", "denominators"):
                getattr(merged, state).extend(getattr(other, state))
        return merged.compute()

    in_order = fed(list(range(50)))
    assert in_order["ssim_ci_low"] < values.mean() < in_order["ssim_ci_high"]
    shuffled = torch.randperm(50, generator=torch.Generator().manual_seed(1)).tolist()
    for found in (fed(shuffled), fed(shuffled, parts=2)):
        assert {k: float(v) for k, v in found.items()} == {k: float(v) for k, v in in_order.items()}
    with pytest.raises(ValueError, match="parts must name"):
        BootstrapIntervals(["ssim"]).update(sample_keys(["a"]), {"psnr": mean_parts(torch.ones(1))})
