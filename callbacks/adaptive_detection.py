"""Detector-aware attacks on the adversarial-example detectors (Carlini & Wagner, AISec 2017, "Adversarial
examples are not easily detected", Sec. 5): after the detectors are fitted on the non-adaptive AdvTrain
pairs, each attack runs again on the AdvTest images, at the same budget, now maximising the task loss
minus ``weight`` times one fitted detector's differentiable score (``attacks.adaptive.DetectorAware``),
one detector at a time. That detector is then scored on the new pairs: rows ``{attack}-adaptive``."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import lightning.pytorch as pl
import torch
from sklearn.pipeline import Pipeline
from torch import Tensor

from attacks.adaptive import DetectorAware
from attacks.base import Attack
from callbacks.detector_features import (
    DETECTORS,
    DetectionSamples,
    FittedDetectors,
    detection_auc,
    detection_tpr,
    lid_mle,
)
from callbacks.detector_scores import differentiable, surrogate, torch_score
from callbacks.detector_views import ModelViews, PairCollector, TrainFeatures, detection_features, model_views, views

ADAPTIVE_SUFFIX = "-adaptive"


@dataclass(frozen=True)
class SeenImages:
    """The test images a detection study saw, with their labels and sample keys, on the CPU."""

    images: Tensor
    target: Tensor
    keys: list[str]

    def select(self, keys: set[str]) -> SeenImages:
        rows = [row for row, key in enumerate(self.keys) if key in keys]
        return SeenImages(self.images[rows], self.target[rows], [self.keys[row] for row in rows])


@dataclass(frozen=True)
class DetectorAwareAttacks:
    """The settings of the detector-aware runs: the KD training features, KD's sigma, LID's k, minibatch
    size and hooked layers, the weight lambda and margin kappa of ``DetectorAware``, and whether only
    successful adversarial examples make pairs (as in the non-adaptive study)."""

    train: TrainFeatures | None
    sigma: float
    k: int
    lid_batch_size: int
    layer_names: tuple[str, ...]
    weight: float
    kappa: float
    successful_only: bool

    def feature(self, name: str, seen: ModelViews, reference: ModelViews) -> Tensor:
        """Detector ``name``'s input for ``seen``; LID against the ``reference`` images' layers (Eq. 10)."""
        feature = DETECTORS[name].feature
        if feature == "lid":
            layers = zip(seen.layers, reference.layers, strict=True)
            return torch.stack([lid_mle(query, batch, self.k) for query, batch in layers], dim=1)
        return detection_features(seen, self.train, self.sigma)[feature]

    def score(
        self, name: str, detector: Pipeline, train: DetectionSamples, pl_module: pl.LightningModule,
        reference: ModelViews,
    ) -> Callable[[Tensor], Tensor]:
        """s(x): the fitted detector on the features of x, or its surrogate where it has no gradient."""
        if not differentiable(detector):
            detector = surrogate(*train.design(DETECTORS[name].feature))
        scored = torch_score(detector)

        def score(images: Tensor) -> Tensor:
            seen = views(pl_module, images, self.layer_names)
            return scored(self.feature(name, seen, reference).double())

        return score

    def reference(self, pl_module: pl.LightningModule, tested: SeenImages) -> ModelViews:
        """LID's clean minibatch (Eq. 10) for the attack and for scoring its pairs alike: the views of the
        first ``lid_batch_size`` correctly classified test images."""
        seen = model_views(pl_module, tested.images.to(pl_module.device), self.layer_names)
        correct = seen.logits.argmax(dim=1) == tested.target.to(pl_module.device)
        return seen.select(correct.nonzero().flatten()[: self.lid_batch_size])

    def run(
        self, pl_module: pl.LightningModule, attacks: Mapping[str, Attack], fitted: FittedDetectors,
        test: SeenImages, reference: ModelViews, detectors: Sequence[str],
    ) -> tuple[dict[str, dict[str, float]], dict[str, dict[str, float]], dict[str, dict[str, int]]]:
        """(AUC, TPR at 5% FPR, AdvTest pair counts) of each detector against its detector-aware attack on
        the AdvTest images ``test``, keyed ``{attack}-adaptive``; NaN where the detector was not fitted."""
        clean = model_views(pl_module, test.images.to(pl_module.device), self.layer_names)
        auc: dict[str, dict[str, float]] = {}
        tpr: dict[str, dict[str, float]] = {}
        pairs: dict[str, dict[str, int]] = {}
        for label, attack in attacks.items():
            row = label + ADAPTIVE_SUFFIX
            auc[row], tpr[row], pairs[row] = {}, {}, {}
            for name in detectors:
                detector = fitted.detectors[label][name]
                samples = self.pairs(name, detector, fitted.splits[label][0], pl_module, attack, test, clean,
                                     reference)
                auc[row][name] = detection_auc(name, detector, samples)
                tpr[row][name] = detection_tpr(name, detector, samples)
                pairs[row][f"advtest_{name}"] = len(samples.keys)
        return auc, tpr, pairs

    def pairs(
        self, name: str, detector: Pipeline | None, train: DetectionSamples, pl_module: pl.LightningModule,
        attack: Attack, test: SeenImages, clean: ModelViews, reference: ModelViews,
    ) -> DetectionSamples:
        """The (clean, adversarial) pairs of ``attack`` made aware of detector ``name``: images correct when
        clean (and fooled, with ``successful_only``), with their features (LID against ``reference``)."""
        collector = PairCollector(None)
        if detector is None:
            return collector.samples()
        images, target = test.images.to(pl_module.device), test.target.to(pl_module.device)
        objective = DetectorAware(pl_module.objective(), self.score(name, detector, train, pl_module, reference),
                                  self.weight, self.kappa)
        adv_images = attack(objective, images, target, ids=test.keys).adv_images
        adversarial = model_views(pl_module, adv_images, self.layer_names)
        keep = clean.logits.argmax(dim=1) == target
        if self.successful_only:
            keep &= adversarial.logits.argmax(dim=1) != target
        rows = keep.nonzero().flatten()
        kept_clean, kept_adversarial = clean.select(rows), adversarial.select(rows)
        collector.add(
            [test.keys[i] for i in rows.tolist()],
            self.pair_features(name, kept_clean, reference),
            self.pair_features(name, kept_adversarial, reference),
            kept_clean.layers,
            kept_adversarial.layers,
        )
        return collector.samples()

    def pair_features(self, name: str, seen: ModelViews, reference: ModelViews) -> dict[str, Tensor]:
        """The detection features of kept images, with LID against ``reference`` for the LID detector."""
        features = detection_features(seen, self.train, self.sigma)
        if DETECTORS[name].feature == "lid":
            features["lid"] = self.feature(name, seen, reference)
        return features
