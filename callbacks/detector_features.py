"""Adversarial-example detection (Ma et al. 2020, Sec. 5) as pure tensor and scikit-learn code: kernel
density (Eq. 9), local intrinsic dimensionality (Eq. 10), deep features (DFeat) and quantised deep
features (QFeat), their detectors, and ROC AUC on an AdvTrain/AdvTest split, per attack and across
attacks (Tables 4 and 5)."""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score, roc_curve
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import FunctionTransformer, MinMaxScaler
from sklearn.svm import SVC
from torch import Tensor

# Eq. 9 has no factor 1/2 in its exponent: sigma = sqrt(2) h for a scikit-learn KernelDensity bandwidth h.
# sqrt(2) is h = 1.0, the SVHN bandwidth of Feinman et al.'s and Ma et al.'s (2018) code.
DEFAULT_SIGMA = math.sqrt(2.0)
DEFAULT_K = 20
DEFAULT_LID_BATCH = 100
DEFAULT_LEVELS = 4
DEFAULT_TRAIN_FRACTION = 0.8  # the 80 / 20 split of Ma et al.'s (2018) code
FALSE_POSITIVE_RATE = 0.05  # the operating point of the TPR we report (Carlini & Wagner 2017 report 5%)


def kernel_density(
    features: Tensor, train_features: Tensor, train_labels: Tensor, predicted: Tensor, sigma: float
) -> Tensor:
    """Log kernel density (Ma et al. 2020, Eq. 9; Feinman et al. 2017) of each row of ``features`` among
    the training features labelled with its ``predicted`` class, kernel exp(-||z - z'||^2 / sigma^2)
    (Eq. 9 as printed lacks the minus sign). -inf where that class has no training features."""
    squared = torch.cdist(features.double(), train_features.double()).square()
    same_class = predicted.view(-1, 1) == train_labels.view(1, -1)
    log_kernel = (-squared / sigma**2).masked_fill(~same_class, -math.inf)
    counts = same_class.sum(dim=1)
    log_density = torch.logsumexp(log_kernel, dim=1) - counts.clamp_min(1).double().log()
    return log_density.masked_fill(counts == 0, -math.inf)


def lid_mle(queries: Tensor, reference: Tensor, k: int, skip_nearest: bool = True) -> Tensor:
    """MLE of the local intrinsic dimensionality of each query from its k nearest reference points
    (Ma et al. 2020, Eq. 10): -1 / mean_i log(r_i / r_k). ``skip_nearest`` drops the closest point first,
    as Ma et al.'s (2018) code does: a clean query's own copy, an adversarial query's clean source."""
    skip = int(skip_nearest)
    k = min(k, reference.shape[0] - skip)
    if k < 1:
        raise ValueError(f"reference needs more than {skip} point(s) for LID, got {reference.shape[0]}")
    distances = torch.cdist(queries.flatten(1).double(), reference.flatten(1).double())
    nearest = distances.topk(k + skip, dim=1, largest=False).values[:, skip:]
    nearest = nearest.clamp_min(torch.finfo(torch.float64).tiny)
    mean_log = (nearest / nearest[:, -1:]).log().mean(dim=1)
    return torch.where(mean_log < 0, -1.0 / mean_log, torch.full_like(mean_log, math.inf))


def check_lid_settings(k: int, batch_size: int) -> None:
    """Raise ValueError unless k >= 1 and a minibatch holds more than k + 1 samples."""
    if int(k) != k or k < 1:
        raise ValueError(f"k must be an integer >= 1, got {k!r}")
    if int(batch_size) != batch_size or batch_size <= k + 1:
        raise ValueError(f"lid_batch_size must be an integer > k + 1 = {k + 1}, got {batch_size!r}")


class MinibatchLID:
    """LID at every layer of clean and adversarial samples w.r.t. minibatches of the clean ones (Ma et
    al. 2018's protocol), returned in the order the samples were added.

    A minibatch is estimated once ``2 * batch_size`` samples wait, so the tail left at ``finish`` can be
    cut into near-equal minibatches of at least ``batch_size / 2`` samples.
    """

    def __init__(self, k: int = DEFAULT_K, batch_size: int = DEFAULT_LID_BATCH) -> None:
        check_lid_settings(k, batch_size)
        self.k = k
        self.batch_size = batch_size
        self._clean: list[Tensor] = []
        self._adversarial: list[Tensor] = []
        self._lids: list[tuple[Tensor, Tensor]] = []

    def add(self, clean_layers: Sequence[Tensor], adversarial_layers: Sequence[Tensor]) -> None:
        """Queue samples: one (n, ...) tensor per layer for the clean images and their adversarial ones."""
        clean = [layer.detach().flatten(1).cpu() for layer in clean_layers]
        adversarial = [layer.detach().flatten(1).cpu() for layer in adversarial_layers]
        if self._clean:
            clean = [torch.cat(pair) for pair in zip(self._clean, clean, strict=True)]
            adversarial = [torch.cat(pair) for pair in zip(self._adversarial, adversarial, strict=True)]
        self._clean, self._adversarial = clean, adversarial
        while self._pending() >= 2 * self.batch_size:
            self._estimate(self.batch_size)

    def finish(self) -> tuple[Tensor, Tensor]:
        """LID (n, layers) of every clean and every adversarial sample added so far."""
        pending = self._pending()
        if pending:
            for chunk in torch.arange(pending).tensor_split(math.ceil(pending / self.batch_size)):
                self._estimate(len(chunk))
        if not self._lids:
            empty = torch.zeros(0, len(self._clean), dtype=torch.float64)
            return empty, empty.clone()
        clean, adversarial = zip(*self._lids, strict=True)
        return torch.cat(clean), torch.cat(adversarial)

    def _pending(self) -> int:
        return self._clean[0].shape[0] if self._clean else 0

    def _estimate(self, size: int) -> None:
        clean = [layer[:size] for layer in self._clean]
        adversarial = [layer[:size] for layer in self._adversarial]
        self._lids.append((
            torch.stack([lid_mle(c, c, self.k) for c in clean], dim=1),
            torch.stack([lid_mle(a, c, self.k) for a, c in zip(adversarial, clean, strict=True)], dim=1),
        ))
        self._clean = [layer[size:] for layer in self._clean]
        self._adversarial = [layer[size:] for layer in self._adversarial]


def quantise(values: np.ndarray, levels: int) -> np.ndarray:
    """Values in [0, 1] rounded to ``levels`` evenly spaced levels (QFeat's discrete code)."""
    return np.round(values * (levels - 1)) / (levels - 1)


@dataclass(frozen=True)
class DetectorSpec:
    """Which detection feature a detector reads, how to build its scikit-learn pipeline from
    (seed, quantisation levels), and its name in the papers' tables."""

    feature: str
    build: Callable[[int, int], Pipeline]
    title: str


def _logistic(seed: int, levels: int) -> Pipeline:
    return make_pipeline(MinMaxScaler(), LogisticRegression(max_iter=1000))


def _forest(seed: int, levels: int) -> Pipeline:
    forest = RandomForestClassifier(n_estimators=100, random_state=seed, n_jobs=1)
    return make_pipeline(MinMaxScaler(), forest)


def _quantised_svm(seed: int, levels: int) -> Pipeline:
    return make_pipeline(
        MinMaxScaler(clip=True),
        FunctionTransformer(quantise, kw_args={"levels": levels}),
        SVC(kernel="rbf", random_state=seed),
    )


# features are scaled to [0, 1] on AdvTrain (Ma et al. 2020, Sec. 5.1); feature names: "kd" (log KD),
# "lid" (LID per layer), "deep" (penultimate features)
DETECTORS: dict[str, DetectorSpec] = {
    "kd": DetectorSpec("kd", _logistic, "KD"),
    "lid": DetectorSpec("lid", _logistic, "LID"),
    "dfeat": DetectorSpec("deep", _forest, "DFeat"),
    "qfeat": DetectorSpec("deep", _quantised_svm, "QFeat"),
}


def check_detectors(detectors: Sequence[str]) -> tuple[str, ...]:
    """The detector names, or ValueError naming the unknown ones."""
    unknown = [name for name in detectors if name not in DETECTORS]
    if unknown or not detectors:
        raise ValueError(
            f"detectors must be a non-empty subset of {tuple(DETECTORS)}, got {tuple(detectors)!r}"
        )
    return tuple(detectors)


@dataclass
class DetectionSamples:
    """Detection features of one attack's pairs: clean images (negatives) and their adversarial versions
    (positives), as feature name -> (n, F) arrays whose rows follow ``keys``."""

    keys: list[str]
    clean: dict[str, np.ndarray]
    adversarial: dict[str, np.ndarray]

    def select(self, rows: np.ndarray) -> DetectionSamples:
        return DetectionSamples(
            [self.keys[i] for i in rows],
            {name: values[rows] for name, values in self.clean.items()},
            {name: values[rows] for name, values in self.adversarial.items()},
        )

    def design(self, feature: str) -> tuple[np.ndarray, np.ndarray]:
        """Design matrix (2n, F), clean rows first, and labels (1 = adversarial)."""
        if not self.keys:
            return np.zeros((0, 1)), np.zeros(0, dtype=np.int64)
        x = np.concatenate([self.clean[feature], self.adversarial[feature]])
        y = np.repeat([0, 1], len(self.keys))
        return x, y

    @staticmethod
    def merge(parts: Iterable[DetectionSamples]) -> DetectionSamples:
        """One set from several (e.g. per rank), sorted by key with duplicate keys dropped, so that the
        result depends neither on the order of the parts nor on the order within them."""
        parts = list(parts)
        parts = [part for part in parts if part.keys] or parts[:1]
        keys = [key for part in parts for key in part.keys]
        names = parts[0].clean.keys()
        clean = {name: np.concatenate([part.clean[name] for part in parts]) for name in names}
        adversarial = {name: np.concatenate([part.adversarial[name] for part in parts]) for name in names}
        first = {key: row for row, key in reversed(list(enumerate(keys)))}
        rows = np.array([first[key] for key in sorted(first)], dtype=np.int64)
        return DetectionSamples(keys, clean, adversarial).select(rows)


def advtrain_keys(
    keys: Iterable[str], train_fraction: float = DEFAULT_TRAIN_FRACTION, seed: int = 0
) -> set[str]:
    """The AdvTrain part of the test-sample keys (the rest is AdvTest): a seeded permutation of the sorted
    unique keys, independent of their order and of how they were spread over ranks."""
    unique = sorted(set(keys))
    order = torch.randperm(len(unique), generator=torch.Generator().manual_seed(seed))
    count = round(train_fraction * len(unique))
    return {unique[i] for i in order[:count].tolist()}


def split_samples(
    samples: DetectionSamples, train_keys: set[str]
) -> tuple[DetectionSamples, DetectionSamples]:
    """(AdvTrain, AdvTest) pairs: a clean image and its adversarial version always fall together."""
    in_train = np.array([key in train_keys for key in samples.keys], dtype=bool)
    return samples.select(np.flatnonzero(in_train)), samples.select(np.flatnonzero(~in_train))


def fit_detector(
    name: str, train: DetectionSamples, seed: int = 0, levels: int = DEFAULT_LEVELS
) -> Pipeline | None:
    """The detector ``name`` fitted on ``train``; None (with a warning) without pairs or finite features."""
    x, y = train.design(DETECTORS[name].feature)
    if len(train.keys) == 0:
        warnings.warn(f"detector {name!r} not fitted: no AdvTrain pairs", stacklevel=2)
        return None
    if not np.isfinite(x).all():
        feature = DETECTORS[name].feature
        warnings.warn(f"detector {name!r} not fitted: non-finite {feature!r} features", stacklevel=2)
        return None
    return DETECTORS[name].build(seed, levels).fit(x, y)


def detector_scores(name: str, detector: Pipeline | None, test: DetectionSamples) -> tuple[np.ndarray, np.ndarray]:
    """The scores of ``detector`` on ``test`` (higher: more adversarial) and the labels; empty when it cannot
    score them (no detector, no pairs, non-finite features)."""
    x, y = test.design(DETECTORS[name].feature)
    if detector is None or len(test.keys) == 0 or not np.isfinite(x).all():
        return np.zeros(0), np.zeros(0, dtype=np.int64)
    if hasattr(detector, "decision_function"):
        return detector.decision_function(x), y
    return detector.predict_proba(x)[:, 1], y


def detection_auc(name: str, detector: Pipeline | None, test: DetectionSamples) -> float:
    """ROC AUC of ``detector`` on ``test`` (positive class: adversarial); NaN when it cannot be scored."""
    scores, y = detector_scores(name, detector, test)
    return float(roc_auc_score(y, scores)) if len(y) else math.nan


def detection_tpr(name: str, detector: Pipeline | None, test: DetectionSamples) -> float:
    """The true-positive rate of ``detector`` on ``test`` at a false-positive rate of at most 5% (the ROC
    curve's highest TPR with FPR <= 0.05); NaN when it cannot be scored."""
    scores, y = detector_scores(name, detector, test)
    if not len(y):
        return math.nan
    fpr, tpr, _ = roc_curve(y, scores)
    return float(tpr[fpr <= FALSE_POSITIVE_RATE].max())


@dataclass
class DetectionReport:
    """AUC and TPR at 5% FPR on AdvTest per attack and detector; transfer AUC per source, target (another
    attack) and detector, the source's AdvTrain detector scored on the target's AdvTest; pair counts per
    split. Detector-aware attacks (``callbacks.adaptive_detection``) add rows ``{attack}-adaptive``."""

    auc: dict[str, dict[str, float]]
    transfer: dict[str, dict[str, dict[str, float]]]
    pairs: dict[str, dict[str, int]]
    tpr: dict[str, dict[str, float]] = field(default_factory=dict)


@dataclass
class FittedDetectors:
    """Each attack's (AdvTrain, AdvTest) pairs and the detectors fitted on its AdvTrain."""

    splits: dict[str, tuple[DetectionSamples, DetectionSamples]]
    detectors: dict[str, dict[str, Pipeline | None]]


def fit_detectors(
    samples: Mapping[str, DetectionSamples],
    train_keys: set[str],
    detectors: Sequence[str] = tuple(DETECTORS),
    seed: int = 0,
    levels: int = DEFAULT_LEVELS,
) -> FittedDetectors:
    """Split each attack's pairs by ``train_keys`` and fit each detector on its AdvTrain."""
    splits = {attack: split_samples(attack_samples, train_keys) for attack, attack_samples in samples.items()}
    fitted = {
        attack: {name: fit_detector(name, train, seed, levels) for name in detectors}
        for attack, (train, _) in splits.items()
    }
    return FittedDetectors(splits, fitted)


def evaluate_detectors(
    samples: Mapping[str, DetectionSamples],
    train_keys: set[str],
    detectors: Sequence[str] = tuple(DETECTORS),
    transfer_sources: Sequence[str] = (),
    seed: int = 0,
    levels: int = DEFAULT_LEVELS,
) -> DetectionReport:
    """Fit each detector on each attack's AdvTrain and score it on that attack's AdvTest (Table 4) and on
    the AdvTest of every other attack for the ``transfer_sources`` (Table 5)."""
    return detection_report(fit_detectors(samples, train_keys, detectors, seed, levels), transfer_sources)


def detection_report(fitted: FittedDetectors, transfer_sources: Sequence[str] = ()) -> DetectionReport:
    """AUC and TPR of each attack's detectors on its AdvTest, transfer AUCs and pair counts."""
    scored = {
        attack: {name: (detection_auc(name, detector, fitted.splits[attack][1]),
                        detection_tpr(name, detector, fitted.splits[attack][1]))
                 for name, detector in row.items()}
        for attack, row in fitted.detectors.items()
    }
    transfer = {
        source: {
            target: {name: detection_auc(name, detector, test) for name, detector in fitted.detectors[source].items()}
            for target, (_, test) in fitted.splits.items()
            if target != source
        }
        for source in transfer_sources
    }
    pairs = {
        attack: {"advtrain": len(train.keys), "advtest": len(test.keys)}
        for attack, (train, test) in fitted.splits.items()
    }
    auc = {attack: {name: values[0] for name, values in row.items()} for attack, row in scored.items()}
    tpr = {attack: {name: values[1] for name, values in row.items()} for attack, row in scored.items()}
    return DetectionReport(auc, transfer, pairs, tpr)
