"""Attack-failure checks: each fires on a purpose-built bad model or attack and stays quiet on a healthy run."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from torch import nn

from attacks import FGSM, PGD, AdaptiveAttack, AutoAttack, DeepFool
from callbacks.attack_eval import AdversarialEvaluation
from callbacks.checks import (
    CellSummary,
    GradientEvidence,
    LossEvidence,
    ModelEvidence,
    averages_draws,
    cross_checks,
    stalled_count,
    verdicts,
)
from datamodules import SyntheticFundusDataModule
from lightning_modules.classifier import ClassifierModule
from lightning_modules.defences import InputDefence, build_transform, with_defence
from lightning_modules.objectives import ClassificationObjective
from tests.attacks.toys import blob_images, trained_classifier


class Rounded(nn.Module):
    """A gradient-masking input quantiser: rounds to 8 grey levels, so every input gradient is zero."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.round(x * 8) / 8


class Noisy(nn.Module):
    """A randomised defence: Gaussian noise on the input, also in eval mode."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + 0.05 * torch.randn_like(x)


def evidence(objective: ClassificationObjective, images: torch.Tensor, labels: torch.Tensor, attack) -> dict:
    model, gradients, loss = ModelEvidence(), GradientEvidence({"cell": attack}), LossEvidence()
    with torch.no_grad():
        clean = objective.forward(images)
    model.update(objective, images, clean)
    gradients.update(objective, images, labels)
    loss.update(attack(objective, images, labels).trace)
    found = model.compute() | gradients.compute()["cell"] | loss.compute()
    return {k: float(v) for k, v in found.items()}


@pytest.fixture(scope="module")
def toy_classifier() -> ClassificationObjective:
    return trained_classifier()


@pytest.fixture(scope="module")
def batch():
    images, labels, _ = blob_images(64, torch.Generator().manual_seed(5))
    return images, labels


def test_a_healthy_run_passes_every_check(toy_classifier, batch):
    images, labels = batch
    found = verdicts(evidence(toy_classifier, images, labels, PGD(eps=4 / 255, steps=10)))
    assert set(found) == {"vanishing_gradients", "random_model", "probability_outputs", "loss_not_increasing"}
    assert all(verdict == "pass" for verdict in found.values()), found


def test_gradient_masking_fires_vanishing_gradients_and_stalled_loss(toy_classifier, batch):
    images, labels = batch
    masked = ClassificationObjective(nn.Sequential(Rounded(), toy_classifier.model))
    found = verdicts(evidence(masked, images, labels, PGD(eps=4 / 255, steps=10)))
    assert found["vanishing_gradients"].startswith("warn: 100% of the samples have zero")
    assert found["loss_not_increasing"].startswith("warn:")
    assert found["random_model"] == "pass"


QUANTISERS = [("bit_depth", {"bits": 3}), ("jpeg", {"quality": 75})]


def vanishing_shares(objective: ClassificationObjective, images: torch.Tensor, labels: torch.Tensor, attacks) -> dict:
    gradients = GradientEvidence(attacks)
    gradients.update(objective, images, labels)
    return {key: float(found["check/vanishing_gradients"]) for key, found in gradients.compute().items()}


@pytest.mark.parametrize(("name", "settings"), QUANTISERS)
def test_vanishing_gradients_reads_the_gradient_the_adaptive_attack_follows(toy_classifier, batch, name, settings):
    images, labels = batch
    defended = ClassificationObjective(InputDefence(toy_classifier.model, build_transform(name, **settings)))
    pgd = PGD(eps=4 / 255, steps=10)
    attacks = {"pgd": pgd, "pgd-bpda": AdaptiveAttack(pgd, "bpda"), "pgd-bpda-eot": AdaptiveAttack(pgd, "bpda_eot", 2),
               "pgd-eot": AdaptiveAttack(pgd, "eot", 2)}
    shares = vanishing_shares(defended, images, labels, attacks)
    # the quantiser's own gradient is zero, BPDA's is the network's; EOT alone does not remove the masking
    assert shares == {"pgd": 1.0, "pgd-bpda": 0.0, "pgd-bpda-eot": 0.0, "pgd-eot": 1.0}
    assert vanishing_shares(toy_classifier, images, labels, {"pgd-eot": attacks["pgd-eot"]}) == {"pgd-eot": 0.0}


def test_gradient_evidence_takes_one_gradient_per_distinct_route(toy_classifier, batch):
    images, labels = batch
    network = toy_classifier.model
    defended = ClassificationObjective(InputDefence(network, build_transform("bit_depth", bits=3)))

    def cells(eps: float) -> dict:
        pgd = PGD(eps=eps)
        return {"pgd": pgd, "fgsm": FGSM(eps=eps), "bpda": AdaptiveAttack(pgd, "bpda"),
                "eot": AdaptiveAttack(pgd, "bpda_eot", draws=3)}

    attacks = {f"{name}/{grey}": attack for grey in (2, 8) for name, attack in cells(grey / 255).items()}
    calls = []
    hook = network.register_forward_hook(lambda *_: calls.append(1))
    try:
        shares = vanishing_shares(defended, images, labels, attacks)
    finally:
        hook.remove()
    assert len(calls) == 1 + 1 + 3  # the model's own gradient, BPDA's, and BPDA inside 3 EOT draws
    assert shares == {key: float(key.startswith(("pgd/", "fgsm/"))) for key in attacks}


def test_the_evaluation_flags_only_the_non_adaptive_cell_of_a_quantised_model():
    torch.manual_seed(0)
    datamodule = SyntheticFundusDataModule(num_samples=40, size=32, seed=0, batch_size=8)
    module = ClassifierModule("small_cnn", num_classes=datamodule.num_classes, in_channels=datamodule.in_channels)
    pgd = PGD(eps=4 / 255, steps=3)
    callback = AdversarialEvaluation({"pgd": lambda _: pgd, "pgd-bpda": lambda _: AdaptiveAttack(pgd, "bpda")},
                                     epsilons=[4 / 255], brisque=False)
    trainer = L.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                        enable_model_summary=False, limit_test_batches=2, callbacks=[callback])
    trainer.test(with_defence(module.eval(), "jpeg", quality=75), datamodule=datamodule, verbose=False)
    assert callback.results["check/pgd/4_255/vanishing_gradients"] == 1.0
    assert callback.results["check/pgd-bpda/4_255/vanishing_gradients"] == 0.0
    assert callback.checks["pgd/4_255"]["vanishing_gradients"].startswith("warn:")
    assert callback.checks["pgd-bpda/4_255"]["vanishing_gradients"] == "pass"


def test_a_randomised_model_fires_random_model(toy_classifier, batch):
    images, labels = batch
    noisy = ClassificationObjective(nn.Sequential(Noisy(), toy_classifier.model))
    found = verdicts(evidence(noisy, images, labels, FGSM(eps=4 / 255)))
    assert found["random_model"].startswith("warn: two forward passes")


def test_the_random_model_check_skips_attacks_that_already_average_draws():
    pgd = PGD(eps=4 / 255)
    assert averages_draws(AdaptiveAttack(pgd, "eot")) and averages_draws(AdaptiveAttack(pgd, "bpda_eot"))
    assert averages_draws(AutoAttack(eps=4 / 255, version="rand"))
    assert not any(averages_draws(attack) for attack in (pgd, AdaptiveAttack(pgd, "bpda"), AutoAttack(eps=4 / 255)))


def test_the_evaluation_warns_random_model_only_on_the_cell_without_eot():
    torch.manual_seed(0)
    datamodule = SyntheticFundusDataModule(num_samples=40, size=32, seed=0, batch_size=8)
    module = ClassifierModule("small_cnn", num_classes=datamodule.num_classes, in_channels=datamodule.in_channels)
    pgd = PGD(eps=4 / 255, steps=2)
    callback = AdversarialEvaluation({"pgd": lambda _: pgd, "pgd-eot": lambda _: AdaptiveAttack(pgd, "eot", draws=2)},
                                     epsilons=[4 / 255], brisque=False)
    trainer = L.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                        enable_model_summary=False, limit_test_batches=1, callbacks=[callback])
    trainer.test(with_defence(module.eval(), "gaussian_noise"), datamodule=datamodule, verbose=False)
    assert callback.checks["pgd/4_255"]["random_model"].startswith("warn:")
    assert "random_model" not in callback.checks["pgd-eot/4_255"]


def test_softmax_outputs_fire_probability_outputs(toy_classifier, batch):
    images, labels = batch
    softmax = ClassificationObjective(nn.Sequential(toy_classifier.model, nn.Softmax(dim=1)))
    found = verdicts(evidence(softmax, images, labels, FGSM(eps=4 / 255)))
    assert found["probability_outputs"].startswith("warn: the model outputs probabilities")


def test_unbounded_attack_that_fails_is_flagged():
    assert verdicts({"check/unbounded_not_broken": 0.31})["unbounded_not_broken"].startswith("warn: an unbounded")
    assert verdicts({"check/unbounded_not_broken": 0.0})["unbounded_not_broken"] == "pass"


def test_stalled_count_reads_first_and_last_recorded_losses():
    nan = float("nan")
    losses = torch.tensor([[1.0, 2.0, nan], [2.0, 1.0, 1.5], [nan, 3.0, nan], [0.5, nan, 0.5]])
    assert stalled_count(losses) == (2, 3)  # row 0 rose, row 1 ended below its start, row 3 flat, row 2 skipped


def cell(attack, budget, accuracy, name=None, access="white-box", steps=10, norm="linf"):
    return CellSummary(attack, budget, name or attack, access, steps, norm, accuracy)


def test_cross_checks_fire_on_each_inconsistency_and_stay_quiet_otherwise():
    healthy = [cell("fgsm", "2_255", 0.6, steps=1), cell("fgsm", "8_255", 0.3, steps=1), cell("pgd", "2_255", 0.5),
               cell("pgd", "8_255", 0.1), cell("square", "8_255", 0.4, access="black-box")]
    assert cross_checks(healthy) == []
    rising = [cell("pgd", "2_255", 0.5), cell("pgd", "8_255", 0.7)]
    ((where, name, _),) = cross_checks(rising)
    assert (where.attack, where.budget, name) == ("pgd", "8_255", "accuracy_rises_with_budget")
    weak = [cell("fgsm", "8_255", 0.3, steps=1), cell("pgd", "8_255", 0.5)]
    ((where, name, reason),) = cross_checks(weak)
    assert (where.attack, name) == ("pgd", "weaker_than_fgsm") and "too small or too few" in reason
    masked = [cell("pgd", "8_255", 0.8), cell("square", "8_255", 0.2, access="black-box")]
    assert [name for _, name, _ in cross_checks(masked)] == ["black_box_beats_white_box"]
    other_norm = [cell("fgsm", "8_255", 0.3, steps=1), cell("pgd", "8_255", 0.5, norm="l2")]
    assert cross_checks(other_norm) == []


def test_pgd_with_a_tiny_step_is_caught_as_weaker_than_fgsm(toy_classifier, batch):
    images, labels = batch
    eps = 8 / 255

    def accuracy(attack) -> float:
        adv = attack(toy_classifier, images, labels).adv_images
        with torch.no_grad():
            return float((toy_classifier.forward(adv).argmax(1) == labels).float().mean())

    cells = [cell("fgsm", "8_255", accuracy(FGSM(eps=eps)), steps=1),
             cell("pgd", "8_255", accuracy(PGD(eps=eps, steps=10, alpha=eps / 1000)))]
    assert [name for _, name, _ in cross_checks(cells)] == ["weaker_than_fgsm"]


def test_deepfool_is_not_flagged_as_unbounded_failure(toy_classifier, batch):
    images, labels = batch
    adv = DeepFool()(toy_classifier, images, labels).adv_images
    with torch.no_grad():
        left = float((toy_classifier.forward(adv).argmax(1) == labels).float().mean())
    assert verdicts({"check/unbounded_not_broken": left})["unbounded_not_broken"] == "pass"
