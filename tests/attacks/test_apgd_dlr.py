"""APGD-DLR and APGD-T: the DLR losses in closed form, the rules, strength, 2- and 3-class fallbacks, and
agreement with the reference implementation (pyautoattack)."""

from __future__ import annotations

import time

import pytest
import torch
from torch import Tensor, nn

from attacks import APGD, APGDDLR, APGDT, build_attack
from attacks.apgd import dlr_loss
from lightning_modules.objectives import ClassificationObjective
from tests.attacks.invariants import accuracy, assert_independent_with_ids, assert_invariants

LOGITS = torch.tensor([[3.0, 1.0, 0.5, -1.0], [0.0, 2.0, 1.0, -2.0]])
TRUE = torch.tensor([0, 0])


def test_dlr_closed_form():
    # sorted logits: (3, 1, 0.5, -1) and (2, 1, 0, -2)
    torch.testing.assert_close(dlr_loss(LOGITS, TRUE), torch.tensor([-(3 - 1) / (3 - 0.5), -(0 - 2) / (2 - 0)]))
    targeted = dlr_loss(LOGITS, TRUE, torch.tensor([2, 3]))
    expected = torch.tensor([-(3 - 0.5) / (3 - (0.5 - 1) / 2), -(0 + 2) / (2 - (0 - 2) / 2)])
    torch.testing.assert_close(targeted, expected)
    # positive exactly when misclassified; invariant to shifting and positively scaling the logits
    assert (dlr_loss(LOGITS, TRUE) > 0).tolist() == [False, True]
    torch.testing.assert_close(dlr_loss(3 * LOGITS - 7, TRUE), dlr_loss(LOGITS, TRUE))


def test_fallbacks_for_two_and_three_classes():
    three = torch.tensor([[2.0, 0.5, -1.0]], requires_grad=True)
    # K = 3 targeted: denominator z_pi1 - (z_pi2 + z_pi3) / 2, so the target ranked 3rd still has a gradient
    loss = dlr_loss(three, torch.tensor([0]), torch.tensor([2]))
    torch.testing.assert_close(loss, torch.tensor([-(2 + 1) / (2 - (0.5 - 1) / 2)]))
    (gradient,) = torch.autograd.grad(loss.sum(), three)
    assert gradient.abs().sum() > 0.1
    torch.testing.assert_close(dlr_loss(three, torch.tensor([1])), torch.tensor([-(0.5 - 2) / (2 + 1)]))
    # K = 2: the plain margin z_other - z_y, untargeted and targeted alike
    two = torch.tensor([[1.5, -0.5], [0.0, 2.0]])
    torch.testing.assert_close(dlr_loss(two, TRUE), torch.tensor([-2.0, 2.0]))
    torch.testing.assert_close(dlr_loss(two, TRUE, torch.tensor([1, 1])), torch.tensor([-2.0, 2.0]))


def test_targets_are_the_top_other_classes_in_order():
    logits = torch.tensor([[0.1, 3.0, 2.0, 1.0], [5.0, 4.0, 6.0, 0.0]])
    goals = list(APGDT(n_target_classes=2, n_restarts=2).goals(ClassificationObjective(nn.Identity()), logits, TRUE))
    assert [goal[:, 1].tolist() for goal in goals] == [[1, 2], [1, 2], [2, 1], [2, 1]]
    assert all(goal[:, 0].tolist() == [0, 0] for goal in goals)
    assert len(list(APGDT().goals(ClassificationObjective(nn.Identity()), logits, TRUE))) == 3  # k = K - 1


CASES = {
    "dlr_linf": (APGDDLR(eps=5 / 255, steps=10), "linf", 5 / 255, False),
    "dlr_l2_fixed_start": (APGDDLR(eps=0.5, steps=10, norm="l2", random_start=False), "l2", 0.5, True),
    "t_linf": (APGDT(eps=5 / 255, steps=10, n_restarts=2), "linf", 5 / 255, False),
    "t_linf_fixed_start": (APGDT(eps=5 / 255, steps=10, random_start=False), "linf", 5 / 255, True),
    "t_l2": (APGDT(eps=0.5, steps=10, norm="l2"), "l2", 0.5, False),
}


@pytest.mark.parametrize("case", CASES, ids=list(CASES))
def test_invariants(case, toy_classifier, toy_batch):
    attack, norm, eps, independent = CASES[case]
    images, labels, _ = toy_batch
    assert_invariants(attack, toy_classifier, images, labels, norm, eps, batch_independent=independent)


def test_sample_ids_make_every_run_per_sample(toy_classifier, toy_batch):
    images, labels, _ = toy_batch
    assert_independent_with_ids(APGDT(eps=5 / 255, steps=5, n_restarts=2), toy_classifier, images, labels)


@pytest.mark.parametrize("name", ["apgd_dlr", "apgd_t"])
def test_needs_classification_logits(name, toy_segmenter, toy_batch):
    images, _, masks = toy_batch
    with pytest.raises(ValueError, match=rf"{name} needs classification logits \(B, K\)"):
        build_attack(name, 4 / 255, steps=2)(toy_segmenter, images, masks)


def test_stronger_than_noise_and_apgd_t_at_least_as_strong_as_apgd_ce(toy_classifier, toy_batch):
    images, labels, _ = toy_batch
    eps = 5 / 255
    noisy = (images + eps * (torch.randint(0, 2, images.shape, generator=torch.Generator()) * 2 - 1)).clamp(0, 1)
    attacked = {cls: accuracy(toy_classifier, cls(eps=eps, steps=20)(toy_classifier, images, labels).adv_images, labels)
                for cls in (APGD, APGDDLR, APGDT)}
    assert accuracy(toy_classifier, noisy, labels) > 0.9
    assert attacked[APGDDLR] < 0.3 and attacked[APGDT] <= attacked[APGD] < 0.3


def test_keeps_clean_images_already_misclassified_and_restarts_only_help(toy_classifier, toy_batch):
    images, labels, _ = toy_batch
    wrong = labels.clone()
    wrong[:4] = (labels[:4] + 1) % 4
    for attack in (APGDDLR(eps=4 / 255, steps=10), APGDT(eps=4 / 255, steps=10)):
        assert torch.equal(attack(toy_classifier, images, wrong).adv_images[:4], images[:4])
    once = APGDDLR(eps=4 / 255, steps=10)(toy_classifier, images, labels).adv_images
    twice = APGDDLR(eps=4 / 255, steps=10, n_restarts=3)(toy_classifier, images, labels).adv_images
    assert accuracy(toy_classifier, twice, labels) <= accuracy(toy_classifier, once, labels)


@pytest.mark.parametrize(
    ("build", "argument"),
    [(lambda: APGDT(n_target_classes=0), "n_target_classes"), (lambda: APGDDLR(n_restarts=0), "n_restarts")],
)
def test_invalid_arguments_raise(build, argument):
    with pytest.raises(ValueError, match=argument):
        build()


def prototype_set(classes: int, n: int, seed: int) -> tuple[Tensor, Tensor]:
    """Images (n, 3, 8, 8): one fixed random prototype per class plus Gaussian noise (sd 0.15), in [0, 1]."""
    prototypes = 0.5 + 0.15 * (torch.rand(classes, 3, 8, 8, generator=torch.Generator().manual_seed(0)) - 0.5)
    generator = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, classes, (n,), generator=generator)
    return (prototypes[labels] + 0.15 * torch.randn(n, 3, 8, 8, generator=generator)).clamp(0, 1), labels


def prototype_classifier(classes: int) -> ClassificationObjective:
    """A two-layer perceptron trained on 2048 images of ``prototype_set`` (about a second on a CPU)."""
    images, labels = prototype_set(classes, 2048, seed=1)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(192, 64), nn.ReLU(), nn.Linear(64, classes))
    optimiser = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(30):
        for start in range(0, len(images), 128):
            optimiser.zero_grad()
            nn.functional.cross_entropy(model(images[start:start + 128]), labels[start:start + 128]).backward()
            optimiser.step()
    optimiser.zero_grad(set_to_none=True)
    return ClassificationObjective(model.eval().requires_grad_(False))


@pytest.mark.parametrize("classes", [2, 3])
def test_two_and_three_class_fallbacks_run_and_work(classes):
    objective = prototype_classifier(classes)
    images, labels = prototype_set(classes, 64, seed=2)
    eps = 8 / 255
    noisy = (images + eps * (torch.randint(0, 2, images.shape, generator=torch.Generator()) * 2 - 1)).clamp(0, 1)
    noise_accuracy = accuracy(objective, noisy, labels)
    assert noise_accuracy > 0.9
    for attack in (APGDDLR(eps=eps, steps=20), APGDT(eps=eps, steps=20)):
        result = assert_invariants(attack, objective, images, labels, "linf", eps, batch_independent=False)
        assert accuracy(objective, result.adv_images, labels) < noise_accuracy - 0.2


@pytest.mark.slow
def test_robust_accuracy_agrees_with_the_reference():
    """Ours and pyautoattack 0.2.0's APGD-DLR and APGD-T (100 steps, 1 restart, 9 targets) on 512 images of a
    10-class set: robust accuracy within 1 point at 2/255 and 8/255 (``-s`` prints the table and times)."""
    reference = pytest.importorskip("pyautoattack.autopgd_base", reason="pip install --no-deps pyautoattack==0.2.0")
    objective = prototype_classifier(10)
    images, labels = prototype_set(10, 512, seed=2)
    print(f"\nclean accuracy {accuracy(objective, images, labels):.4f}")
    print("attack    eps    ours acc  ref acc  ours s  ref s")
    for eps in (2 / 255, 8 / 255):
        pairs = [
            (APGDDLR(eps=eps), reference.APGDAttack(objective.model, eps=eps, loss="dlr", n_iter=100)),
            (APGDT(eps=eps), reference.APGDAttack_targeted(objective.model, eps=eps, n_iter=100, n_target_classes=9)),
        ]
        for ours, theirs in pairs:
            start = time.perf_counter()
            our_accuracy = accuracy(objective, ours(objective, images, labels).adv_images, labels)
            our_time = time.perf_counter() - start
            with torch.random.fork_rng():  # the reference seeds torch's global generator
                start = time.perf_counter()
                their_accuracy = accuracy(objective, theirs.perturb(images, labels), labels)
                their_time = time.perf_counter() - start
            print(f"{ours.name:9} {eps * 255:.0f}/255  {our_accuracy:.4f}    {their_accuracy:.4f}   "
                  f"{our_time:5.2f}   {their_time:5.2f}")
            assert abs(our_accuracy - their_accuracy) <= 0.01, (ours.name, eps)
