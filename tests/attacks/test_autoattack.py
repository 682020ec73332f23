"""The AutoAttack cascade: stages run only on the samples still robust, the stage that broke each sample is
recorded, the ensemble is at least as strong as its first stage, and it agrees with the reference code."""

from __future__ import annotations

import time

import pytest
import torch

from attacks import APGD, ATTACKS, build_attack
from attacks.autoattack import CLEAN_MISTAKE, ROBUST, AutoAttack
from tests.attacks.invariants import accuracy, assert_invariants
from tests.attacks.test_apgd_dlr import prototype_classifier, prototype_set

EPS = 8 / 255


@pytest.fixture(scope="module")
def ten_classes():
    """A perceptron on a 10-class prototype set and 256 held-out images (as AutoAttack's 9 targets need)."""
    objective = prototype_classifier(10)
    images, labels = prototype_set(10, 256, seed=2)
    return objective, images, labels


def test_registered_and_built_from_its_name():
    attack = build_attack("autoattack", 4 / 255, version="plus", norm="l2")
    assert "autoattack" in ATTACKS and attack.settings["version"] == "plus" and attack.eps == 4 / 255
    assert attack.stage_names == ["apgd_ce", "apgd_dlr", "fab", "apgd_t", "fab_t"]  # L2: no Linf Square
    assert AutoAttack().stage_names == ["apgd_ce", "apgd_t", "fab_t", "square"]
    assert AutoAttack(version="rand").stage_names == ["apgd_ce x 20 draws", "apgd_dlr x 20 draws"]
    with pytest.raises(ValueError, match="version"):
        AutoAttack(version="fast")


def test_invariants(toy_classifier, toy_batch):
    images, labels, _ = toy_batch
    assert_invariants(AutoAttack(eps=EPS, steps=10), toy_classifier, images, labels, "linf", EPS,
                      batch_independent=False)


def test_cascade_records_the_breaking_stage_and_beats_its_first_stage(ten_classes):
    objective, images, labels = ten_classes
    eps = 3 / 255
    result = AutoAttack(eps=eps, steps=20)(objective, images, labels)
    stage = result.extras["stage"]
    with torch.no_grad():
        clean_correct = objective.forward(images).argmax(1) == labels
        adv_correct = objective.forward(result.adv_images).argmax(1) == labels
    assert torch.equal(stage == CLEAN_MISTAKE, ~clean_correct)
    assert torch.equal(stage == ROBUST, adv_correct)
    assert torch.equal(result.adv_images[~clean_correct], images[~clean_correct])  # never touched
    assert (stage > 0).sum() > 0 and set(stage.tolist()) <= {ROBUST, CLEAN_MISTAKE, 1, 2, 3, 4}
    first = accuracy(objective, APGD(eps=eps, steps=20)(objective, images, labels).adv_images, labels)
    assert adv_correct.float().mean().item() <= first


@pytest.mark.slow
def test_standard_version_agrees_with_the_reference(ten_classes):
    """Ours and pyautoattack 0.2.0's standard AutoAttack (APGD-CE, APGD-T, FAB-T, Square 5000): robust
    accuracy within 1 point at 2/255 and 8/255 on 256 images (``-s`` prints the table and times)."""
    reference = pytest.importorskip("pyautoattack", reason="pip install --no-deps pyautoattack==0.2.0")
    objective, images, labels = ten_classes
    print("\neps    ours acc  ref acc  ours s  ref s")
    for eps in (2 / 255, 8 / 255):
        start = time.perf_counter()
        ours = accuracy(objective, AutoAttack(eps=eps)(objective, images, labels).adv_images, labels)
        our_time = time.perf_counter() - start
        adversary = reference.AutoAttack(objective.model, norm="Linf", eps=eps, version="standard", seed=0)
        with torch.random.fork_rng():  # the reference seeds torch's global generator
            start = time.perf_counter()
            crafted = adversary.run_standard_evaluation(images, labels, batch_size=256)
            theirs = accuracy(objective, crafted[0] if isinstance(crafted, tuple) else crafted, labels)
            their_time = time.perf_counter() - start
        print(f"{eps * 255:.0f}/255  {ours:.4f}    {theirs:.4f}   {our_time:6.2f}  {their_time:6.2f}")
        assert abs(ours - theirs) <= 0.01, eps
