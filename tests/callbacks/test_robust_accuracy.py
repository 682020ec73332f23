"""Robust-accuracy mode of AdversarialEvaluation: the robust accuracy of the full evaluation from fewer forward
passes, metric definitions kept, perturbation statistics over the attacked samples."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from attacks.apgd import APGD
from attacks.gradient import PGD
from attacks.square import SquareAttack
from callbacks.attack_eval import AdversarialEvaluation
from callbacks.robust_accuracy import attack_rows, stopping_early
from tests.callbacks.test_attack_eval import evaluate

EPS = 1 / 255
ATTACKS = {
    "pgd": (lambda eps: PGD(eps=eps, steps=10), [EPS]),
    "apgd": (lambda eps: APGD(eps=eps, steps=10), [EPS]),
}
KEYS = [f"{name}/1_255" for name in ATTACKS]


def counted_evaluation(fitted_classifier, robust: bool) -> tuple[AdversarialEvaluation, int]:
    """The evaluation of one test batch, and how many images the model forwarded in all."""
    module, datamodule = fitted_classifier
    callback = AdversarialEvaluation(ATTACKS, brisque=False, examples=0, robust_accuracy_only=robust)
    forwarded = 0

    def count(_: torch.nn.Module, inputs: tuple) -> None:
        nonlocal forwarded
        forwarded += len(inputs[0])

    handle = module.register_forward_pre_hook(count)
    try:
        evaluate(module, datamodule, callback, limit_test_batches=1)
    finally:
        handle.remove()
    return callback, forwarded


@pytest.mark.slow
def test_robust_accuracy_mode_gives_the_full_robust_accuracy_for_fewer_forwards(fitted_classifier):
    full, full_forwarded = counted_evaluation(fitted_classifier, robust=False)
    robust, robust_forwarded = counted_evaluation(fitted_classifier, robust=True)
    results, clean = robust.results, robust.results["clean/accuracy"]
    assert 0.3 < clean < 1  # some samples are skipped, some attacked
    assert robust.evaluation_settings()["robust_accuracy_only"] is True
    assert all(attack.early_stop for attack in robust.attacks.values())
    for key in KEYS:
        accuracy = results[f"adv/{key}/accuracy"]
        assert 0 < accuracy < clean, key  # neither side of the comparison is trivial
        # the same per-sample random starts and steps: a sample robust here is robust in the full evaluation,
        # which can only keep a sample its last step un-fooled again
        kept, full_kept = robust.sample_scores[key], full.sample_scores[key]
        assert all(full_kept[i] >= score for i, score in kept.items()), key
        assert accuracy == pytest.approx(full.results[f"adv/{key}/accuracy"], abs=1 / 32), key
        # misclassified samples are never repaired: accuracy = clean accuracy x (1 - success rate)
        assert accuracy == pytest.approx(clean * (1 - results[f"adv/{key}/success_rate"]), abs=1e-6), key
        # perturbations are means over the attacked (correct) samples, each inside the budget
        assert 0 < results[f"adv/{key}/linf"] <= EPS + 1e-6, key
        assert results[f"adv/{key}/linf_ci_low"] <= results[f"adv/{key}/linf"] <= results[f"adv/{key}/linf_ci_high"]
    assert robust_forwarded < 0.6 * full_forwarded


@pytest.mark.slow
def test_skipping_the_attacks_clean_checks_saves_their_forwards_and_changes_no_score(fitted_classifier, monkeypatch):
    promised, promised_forwarded = counted_evaluation(fitted_classifier, robust=True)

    def checking_clean(attack):
        checking = stopping_early(attack)
        checking.clean_unfooled = False
        return checking

    monkeypatch.setattr("callbacks.attack_eval.stopping_early", checking_clean)
    checked, checked_forwarded = counted_evaluation(fitted_classifier, robust=True)
    assert promised.sample_scores == checked.sample_scores
    for key in KEYS:
        assert promised.results[f"adv/{key}/accuracy"] == checked.results[f"adv/{key}/accuracy"]
    # PGD and APGD each forwarded the correctly classified samples once less
    correct = sum(promised.sample_scores["clean"].values())
    assert checked_forwarded - promised_forwarded == len(ATTACKS) * correct


def test_rows_attacked_spread_over_the_batch():
    images = torch.rand(4, 3, 8, 8)
    rows = torch.tensor([1, 3])
    calls = []

    def run(x, y, ids):
        calls.append(ids)
        return SimpleNamespace(adv_images=x + 0.01, extras={"norms": torch.tensor([0.5, math.inf])})

    attacked = attack_rows(run, images, torch.zeros(4, dtype=torch.long), ["a", "b", "c", "d"], rows)
    assert calls == [["b", "d"]]
    torch.testing.assert_close(attacked.adv_images[rows], images[rows] + 0.01)
    torch.testing.assert_close(attacked.adv_images[[0, 2]], images[[0, 2]])
    assert attacked.extra("norms").tolist() == [0.0, 0.5, 0.0, math.inf]
    assert attacked.extra("goal") is None
    spread = attacked.spread({"l2": (torch.tensor([1.0, 2.0]), torch.ones(2))}, images.device)
    assert spread["l2"][0].isnan().tolist() == [True, False, True, False]
    nothing = attack_rows(run, images, torch.zeros(4, dtype=torch.long), list("abcd"), rows[:0])
    assert len(calls) == 1 and nothing.result is None and nothing.adv_images is images


def test_stopping_early_rebuilds_copies_that_stop_early_and_skip_the_clean_check_when_untargeted():
    pgd = PGD(eps=EPS, steps=3)
    stopping = stopping_early(pgd)
    assert stopping.early_stop and not pgd.early_stop
    assert stopping.clean_unfooled and not pgd.clean_unfooled
    assert {k: v for k, v in stopping.settings.items() if k != "early_stop"} == {
        k: v for k, v in pgd.settings.items() if k != "early_stop"
    }
    square = SquareAttack(eps=EPS, max_queries=10)
    square_copy = stopping_early(square)
    assert square_copy is not square and square_copy.settings == square.settings
    assert square_copy.clean_unfooled and not square.clean_unfooled
    # untargeted only: correct means not fooled, but a targeted goal may be the true class (target_mode given)
    targeted = stopping_early(PGD(eps=EPS, steps=3, target_mode="least_likely"))
    assert targeted.early_stop and not targeted.clean_unfooled
