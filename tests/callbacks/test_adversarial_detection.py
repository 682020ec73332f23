"""Adversarial-example detectors (Ma et al. 2020, Sec. 5): KD and LID closed forms, the LID minibatch
protocol, splits, detector AUCs on synthetic features, and the trainer.test callback end to end."""

from __future__ import annotations

import math

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader

from attacks.gradient import FGSM, PGD
from callbacks.adversarial_detection import AdversarialDetectionEvaluation, detection_metrics
from callbacks.detector_features import (
    DETECTORS,
    DetectionSamples,
    MinibatchLID,
    advtrain_keys,
    evaluate_detectors,
    kernel_density,
    lid_mle,
    quantise,
    split_samples,
)
from callbacks.detector_views import captured_outputs, model_views
from lightning_modules.objectives import ClassificationObjective
from tests.attacks.toys import blob_images, small_cnn, train

EPS = 8 / 255
TRANSFERS = [("fgsm", "pgd"), ("pgd", "fgsm")]


# ---------------------------------------------------------------- KD (Eq. 9) and LID (Eq. 10)


def test_kernel_density_matches_eq9_with_the_minus_sign() -> None:
    train_features = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 5.0]])
    train_labels = torch.tensor([0, 0, 1])
    queries = torch.tensor([[0.0, 0.0], [0.0, 0.0], [100.0, 0.0]])
    sigma = 2.0
    log_kd = kernel_density(queries, train_features, train_labels, torch.tensor([0, 1, 0]), sigma)
    # at a training sample of its class: (exp(0) + exp(-1 / 4)) / 2; only class-1 samples for class 1
    assert log_kd[0].item() == pytest.approx(math.log((1 + math.exp(-1 / 4)) / 2))
    assert log_kd[1].item() == pytest.approx(-25 / 4)
    # far away: exp(-99^2 / 4) underflows as a density, not as a log density
    assert log_kd[2].item() == pytest.approx(-(99**2) / 4 + math.log((1 + math.exp(-199 / 4)) / 2))
    assert log_kd[0] > log_kd[2]


def test_kernel_density_of_a_class_without_training_features_is_minus_infinity() -> None:
    labels, predicted = torch.tensor([0, 0]), torch.tensor([1])
    log_kd = kernel_density(torch.zeros(1, 2), torch.zeros(2, 2), labels, predicted, 1.0)
    assert log_kd.item() == -math.inf


def test_lid_closed_form_from_three_neighbours() -> None:
    query = torch.zeros(1, 3)
    reference = torch.tensor([[1.0, 0, 0], [0, 2.0, 0], [0, 0, 4.0], [0, 0, 9.0]])
    # Eq. 10 with r = (1, 2, 4): -(mean(log 1/4, log 2/4, log 1))^-1 = 3 / log 8
    assert lid_mle(query, reference, k=3, skip_nearest=False).item() == pytest.approx(3 / math.log(8))
    # a query inside the reference set skips its own copy (distance 0) and gets the same estimate
    with_self = torch.cat([query, reference])
    assert lid_mle(query, with_self, k=3).item() == pytest.approx(3 / math.log(8))


@pytest.mark.parametrize("dimension", [1, 2])
def test_lid_of_a_flat_manifold_embedded_in_30_dimensions_is_its_dimension(dimension: int) -> None:
    generator = torch.Generator().manual_seed(dimension)
    basis = torch.linalg.qr(torch.randn(30, 30, generator=generator))[0][:, :dimension]
    points = torch.rand(2000, dimension, generator=generator) @ basis.T
    lid = lid_mle(points[:200], points, k=20)
    assert lid.median().item() == pytest.approx(dimension, rel=0.15)


def test_minibatch_lid_estimates_each_minibatch_against_its_clean_samples_in_order() -> None:
    generator = torch.Generator().manual_seed(0)
    clean = [torch.randn(250, 8, generator=generator), torch.randn(250, 3, generator=generator)]
    adversarial = [layer + 0.3 * torch.randn(layer.shape, generator=generator) for layer in clean]
    lid = MinibatchLID(k=10, batch_size=100)
    for start in range(0, 250, 25):
        rows = slice(start, start + 25)
        lid.add([layer[rows] for layer in clean], [layer[rows] for layer in adversarial])
    clean_lid, adversarial_lid = lid.finish()
    assert clean_lid.shape == adversarial_lid.shape == (250, 2)
    # 100 estimated once 200 waited, then the 150 left as two minibatches of 75
    for chunk in (slice(0, 100), slice(100, 175), slice(175, 250)):
        for layer in range(2):
            reference, queries = clean[layer][chunk], adversarial[layer][chunk]
            assert torch.allclose(clean_lid[chunk, layer], lid_mle(reference, reference, 10))
            assert torch.allclose(adversarial_lid[chunk, layer], lid_mle(queries, reference, 10))


# ---------------------------------------------------------------- splits and detectors


def synthetic_samples(pairs: int, shift: float, seed: int, prefix: str = "s") -> DetectionSamples:
    """Pairs whose adversarial features are the clean distribution moved by ``shift`` in every feature."""
    rng = np.random.default_rng(seed)
    widths = {"kd": 1, "lid": 3, "deep": 16}
    clean = {name: rng.normal(size=(pairs, width)) for name, width in widths.items()}
    adversarial = {name: rng.normal(size=values.shape) + shift for name, values in clean.items()}
    return DetectionSamples([f"{prefix}{i:04d}" for i in range(pairs)], clean, adversarial)


def test_quantise_rounds_to_evenly_spaced_levels() -> None:
    values = np.array([0.0, 0.1, 0.2, 0.5, 0.9, 1.0])
    assert np.allclose(quantise(values, 4), [0, 0, 1 / 3, 2 / 3, 1, 1])


def test_advtrain_split_is_seeded_and_independent_of_key_order() -> None:
    keys = [f"id{i}" for i in range(100)]
    first = advtrain_keys(keys, 0.8, seed=3)
    assert len(first) == 80 and first <= set(keys)
    assert advtrain_keys(list(reversed(keys)) + keys[:10], 0.8, seed=3) == first
    assert advtrain_keys(keys, 0.8, seed=4) != first


def test_split_keeps_each_clean_image_with_its_adversarial_version() -> None:
    samples = synthetic_samples(50, 1.0, seed=0)
    train_part, test_part = split_samples(samples, advtrain_keys(samples.keys, 0.8, seed=0))
    assert len(train_part.keys) == 40 and not set(train_part.keys) & set(test_part.keys)
    rows = [samples.keys.index(key) for key in test_part.keys]
    assert np.array_equal(test_part.clean["deep"], samples.clean["deep"][rows])
    assert np.array_equal(test_part.adversarial["deep"], samples.adversarial["deep"][rows])


def test_merge_sorts_by_key_and_drops_duplicates() -> None:
    samples = synthetic_samples(30, 1.0, seed=1)
    parts = [samples.select(np.arange(15, 30)), samples.select(np.arange(0, 16))]
    merged = DetectionSamples.merge(parts)
    assert merged.keys == samples.keys
    assert np.array_equal(merged.clean["lid"], samples.clean["lid"])


@pytest.mark.parametrize("shift, low, high", [(4.0, 0.99, 1.0), (0.0, 0.4, 0.6)])
def test_detectors_separate_shifted_not_identical_features(shift: float, low: float, high: float) -> None:
    samples = synthetic_samples(500, shift, seed=2)
    report = evaluate_detectors({"attack": samples}, advtrain_keys(samples.keys, 0.8, seed=0))
    assert report.pairs == {"attack": {"advtrain": 400, "advtest": 100}}
    for name, auc in report.auc["attack"].items():
        assert low <= auc <= high, f"{name}: AUC {auc}"


def test_transfer_scores_each_source_detector_on_every_other_attack() -> None:
    samples = {
        "fgsm": synthetic_samples(60, 3.0, seed=3, prefix="a"),
        "bim": synthetic_samples(60, 3.0, seed=4, prefix="a"),
        "pgd": synthetic_samples(60, -3.0, seed=5, prefix="a"),
    }
    keys = advtrain_keys(samples["fgsm"].keys, 0.8, seed=0)
    report = evaluate_detectors(samples, keys, ("kd", "dfeat"), transfer_sources=("fgsm", "pgd"))
    assert {source: set(targets) for source, targets in report.transfer.items()} == {
        "fgsm": {"bim", "pgd"}, "pgd": {"fgsm", "bim"}
    }
    # a detector learnt on features shifted up transfers to another up-shift, not to a down-shift
    assert report.transfer["fgsm"]["bim"]["kd"] > 0.95
    assert report.transfer["fgsm"]["pgd"]["kd"] < 0.05
    metrics = detection_metrics(report)
    assert metrics["detect/transfer/pgd->fgsm/dfeat/auc"] == report.transfer["pgd"]["fgsm"]["dfeat"]
    assert len(metrics) == 3 * 2 * 2 + 4 * 2 + 3 * 2  # AUCs and TPRs, transfer AUCs, pair counts
    # up-shifted pairs: at most 5% of clean rows score above the threshold, nearly every adversarial one does
    assert report.tpr["fgsm"]["kd"] > 0.9 and metrics["detect/fgsm/kd/tpr_at_5fpr"] == report.tpr["fgsm"]["kd"]


def test_an_attack_without_kept_pairs_scores_nan() -> None:
    empty = synthetic_samples(10, 1.0, seed=6).select(np.arange(0))
    with pytest.warns(UserWarning, match="no AdvTrain pairs"):
        report = evaluate_detectors({"weak": empty}, set(), ("kd",))
    assert math.isnan(report.auc["weak"]["kd"]) and report.pairs["weak"] == {"advtrain": 0, "advtest": 0}


# ---------------------------------------------------------------- the callback


@pytest.mark.parametrize(
    "arguments, word",
    [
        ({"detectors": ("kd", "mahalanobis")}, "detectors"),
        ({"transfer_sources": ("cw",)}, "transfer_sources"),
        ({"train_fraction": 1.0}, "train_fraction"),
        ({"k": 20, "lid_batch_size": 21}, "lid_batch_size"),
        ({"sigma": 0.0}, "sigma"),
        ({"quantisation_levels": 1}, "quantisation_levels"),
    ],
)
def test_callback_rejects_bad_arguments_by_name(arguments: dict, word: str) -> None:
    with pytest.raises(ValueError, match=word):
        AdversarialDetectionEvaluation({"fgsm": FGSM(eps=EPS)}, **arguments)


class BlobClassifier(pl.LightningModule):
    """A trained blob-quadrant CNN with the classifier contract: logits, penultimate features, objective."""

    def __init__(self, network: nn.Sequential) -> None:
        super().__init__()
        self.network = network

    def features(self, images: torch.Tensor) -> torch.Tensor:
        return self.network[:-1](images)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.network(images)

    def objective(self) -> ClassificationObjective:
        return ClassificationObjective(self)

    def test_step(self, batch: dict, batch_idx: int) -> None:
        return None


def blob_rows(count: int, seed: int, prefix: str) -> list[dict]:
    images, labels, _ = blob_images(count, torch.Generator().manual_seed(seed))
    return [{"image": images[i], "target": labels[i], "id": f"{prefix}{i}"} for i in range(count)]


class BlobData(pl.LightningDataModule):
    def __init__(self, test_count: int = 120) -> None:
        super().__init__()
        self.train_rows = blob_rows(256, 0, "train")
        self.test_rows = blob_rows(test_count, 7, "test")

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.train_rows, batch_size=64)

    def test_dataloader(self) -> DataLoader:
        return DataLoader(self.test_rows, batch_size=40)


@pytest.fixture(scope="module")
def blob_classifier() -> BlobClassifier:
    images, labels, _ = blob_images(256, torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    return BlobClassifier(train(small_cnn(4, dense=False), images, labels, nn.CrossEntropyLoss(), epochs=15))


def test_model_views_adds_hooked_layers_and_removes_the_hooks(blob_classifier: BlobClassifier) -> None:
    images = torch.rand(5, 3, 16, 16)
    views = model_views(blob_classifier, images, ("network.2",))
    assert [tuple(layer.shape) for layer in views.layers] == [(5, 16 * 16 * 16), (5, 64), (5, 4)]
    assert torch.equal(views.layers[-1], views.logits)
    with captured_outputs(blob_classifier, ("network.2",)):
        pass
    assert not blob_classifier.network[2]._forward_hooks


def trainer_for(*callbacks: pl.Callback, **options) -> pl.Trainer:
    return pl.Trainer(
        accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False,
        callbacks=list(callbacks), **options,
    )


def test_trainer_test_detects_pgd_and_keeps_correct_successful_pairs(blob_classifier: BlobClassifier) -> None:
    attacks = {"fgsm": FGSM(eps=EPS), "pgd": PGD(eps=EPS, steps=10)}
    detection = AdversarialDetectionEvaluation(attacks, transfer_sources=("fgsm", "pgd"))
    every_correct = AdversarialDetectionEvaluation(
        {"fgsm": FGSM(eps=EPS)}, detectors=("kd",), successful_only=False
    )
    data = BlobData()
    logged = trainer_for(detection, every_correct).test(blob_classifier, datamodule=data, verbose=False)[0]

    auc = detection.results["auc"]
    print("detection AUC:", auc)
    assert auc["pgd"]["kd"] > 0.9  # Ma et al. report > 0.98
    assert all(value > 0.9 for row in auc.values() for value in row.values())
    assert set(detection.results["transfer"]) == {"fgsm", "pgd"}
    expected = {f"detect/{a}/{d}/auc" for a in attacks for d in DETECTORS}
    expected |= {f"detect/transfer/{s}->{t}/{d}/auc" for s, t in TRANSFERS for d in DETECTORS}
    assert expected <= set(logged)
    assert logged["detect/pgd/kd/auc"] == pytest.approx(auc["pgd"]["kd"])

    # the same PGD run again, batch by batch as the callback saw it: a sample's result may differ in the
    # last bits between batch sizes (another kernel), which could flip a borderline one
    correct, fooled = [], []
    for batch in data.test_dataloader():
        images, labels = batch["image"], batch["target"]
        correct.append(blob_classifier(images).argmax(dim=1) == labels)
        # the callback keys each sample's random start by its id
        adv_images = attacks["pgd"](blob_classifier.objective(), images, labels, ids=batch["id"]).adv_images
        fooled.append(blob_classifier(adv_images).argmax(dim=1) != labels)
    correct, fooled = torch.cat(correct), torch.cat(fooled)
    assert sum(detection.results["pairs"]["pgd"].values()) == int((correct & fooled).sum())
    assert sum(every_correct.results["pairs"]["fgsm"].values()) == int(correct.sum())


@pytest.mark.slow
def test_two_process_ddp_gives_the_single_process_detection_results(blob_classifier: BlobClassifier) -> None:
    """Ranks see half the test set each; gathered pairs, the key-based split and KD/DFeat/QFeat AUCs match
    one process exactly (LID differs: its minibatches are formed per rank)."""

    def detection() -> AdversarialDetectionEvaluation:
        # a budget of one grey level, failed attacks kept: detection is hard enough to give AUCs below 1
        return AdversarialDetectionEvaluation(
            {"fgsm": FGSM(eps=1 / 255)}, detectors=("kd", "dfeat", "qfeat"), successful_only=False
        )

    single = trainer_for(detection()).test(blob_classifier, datamodule=BlobData(), verbose=False)[0]
    spawned = trainer_for(detection(), strategy="ddp_spawn", devices=2).test(
        blob_classifier, datamodule=BlobData(), verbose=False
    )[0]
    print("single-process:", single)
    assert single["detect/fgsm/pairs/advtrain"] + single["detect/fgsm/pairs/advtest"] > 100
    assert any(value < 0.99 for name, value in single.items() if name.endswith("/auc"))
    assert spawned == pytest.approx(single, abs=1e-6)


def test_kd_training_quota_is_split_over_classes_in_a_class_sorted_loader():
    from callbacks.adversarial_detection import within_quota

    taken = torch.zeros(3, dtype=torch.long)
    first = within_quota(torch.tensor([0, 0, 0, 0, 1]), taken, quota=2)
    second = within_quota(torch.tensor([1, 1, 2, 0]), taken, quota=2)
    assert first.tolist() == [True, True, False, False, True]
    assert second.tolist() == [True, False, True, False]
    assert taken.tolist() == [2, 2, 1]


def test_a_detector_aware_attack_lowers_the_auc_of_the_detector_it_evades(blob_classifier: BlobClassifier) -> None:
    """PGD that also pushes LID's or QFeat's differentiable score down (Carlini & Wagner 2017) at the same
    budget: the detector fitted on plain PGD's AdvTrain separates its AdvTest pairs less well."""
    attacks = {"pgd": PGD(eps=EPS, steps=10)}
    detection = AdversarialDetectionEvaluation(attacks, detectors=("lid", "qfeat"), lid_batch_size=50,
                                               adaptive_weight=1.0)
    logged = trainer_for(detection).test(blob_classifier, datamodule=BlobData(200), verbose=False)[0]
    auc = detection.results["auc"]
    print("detection AUC:", auc, "TPR at 5% FPR:", detection.results["tpr"])
    for name in ("lid", "qfeat"):
        assert auc["pgd-adaptive"][name] < auc["pgd"][name] - 0.05
        assert detection.results["pairs"]["pgd-adaptive"][f"advtest_{name}"] >= 10
    assert {"detect/pgd-adaptive/qfeat/auc", "detect/pgd-adaptive/qfeat/tpr_at_5fpr",
            "detect/pgd/qfeat/tpr_at_5fpr"} <= set(logged)
