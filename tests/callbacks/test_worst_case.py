"""Per-sample worst case over attacks: robust only if every attack at the budget failed."""

from __future__ import annotations

import pytest

from attacks import BIM, FGSM, PGD, BracketedExposureFusion, DeepFool
from callbacks.worst_case import threat_group, worst_case_metrics, worst_scores


def test_worst_scores_take_each_samples_minimum_over_the_samples_all_attacks_scored():
    assert worst_scores([{"a": 1.0, "b": 1.0, "c": 0.0}, {"a": 0.0, "b": 1.0}]) == {"a": 0.0, "b": 1.0}


def test_only_attacks_whose_eps_is_the_budget_are_pooled_by_norm():
    assert threat_group(FGSM(eps=8 / 255).settings, "8_255") == "worst"
    assert threat_group(PGD(eps=0.5, norm="l2").settings, "0.5") == "worst_l2"
    assert threat_group(DeepFool().settings, "min") is None
    assert threat_group(BracketedExposureFusion(alpha=0.01).settings, "0.01") is None


def test_worst_case_accuracy_is_below_every_single_attack_with_its_interval():
    attacks = {"fgsm/8_255": FGSM(eps=8 / 255), "bim/8_255": BIM(eps=8 / 255), "pgd/2_255": PGD(eps=2 / 255),
               "deepfool/min": DeepFool()}
    scores = {
        "fgsm/8_255": {str(i): float(i % 2) for i in range(40)},  # odd samples survive FGSM
        "bim/8_255": {str(i): float(i % 3 != 0) for i in range(40)},  # all but multiples of 3 survive BIM
        "pgd/2_255": {str(i): 1.0 for i in range(40)},
        "deepfool/min": {str(i): 0.0 for i in range(40)},
    }
    metrics = worst_case_metrics(attacks, scores, "accuracy", binary=True)
    robust = sum(1 for i in range(40) if i % 2 and i % 3)  # 13 of 40
    assert metrics["adv/worst/8_255/accuracy"] == pytest.approx(robust / 40)
    assert metrics["adv/worst/8_255/attacks"] == 2
    assert metrics["adv/worst/8_255/accuracy_ci_low"] < robust / 40 < metrics["adv/worst/8_255/accuracy_ci_high"]
    assert not any(key.startswith("adv/worst/2_255") or "min" in key for key in metrics)  # one attack: no pool
    dense = worst_case_metrics(attacks, {k: {"x": 0.5, "y": 0.9} for k in scores}, "image_jaccard", binary=False)
    assert dense["adv/worst/8_255/image_jaccard"] == pytest.approx(0.7) and dense["adv/worst/8_255/attacks"] == 2
    # two images: a bootstrap resample is both low (1/4), both high (1/4) or mixed, so the 95% interval is the range
    assert (dense["adv/worst/8_255/image_jaccard_ci_low"], dense["adv/worst/8_255/image_jaccard_ci_high"]) == (0.5, 0.9)
