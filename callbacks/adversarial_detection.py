"""Adversarial-example detection inside ``trainer.test`` (Ma et al. 2020, Sec. 5): every test batch is
attacked, detection features of the clean and adversarial images are collected, and after the epoch the
KD, LID, DFeat and QFeat detectors are fitted on AdvTrain and scored on AdvTest (Tables 4 and 5); with
``adaptive_weight``, also against detector-aware attacks (``callbacks.adaptive_detection``)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict
from typing import Any

import lightning.pytorch as pl
import torch
from torch import Tensor

from attacks.base import Attack, check_positive, check_steps
from callbacks.adaptive_detection import DetectorAwareAttacks, SeenImages
from callbacks.detector_features import (
    DEFAULT_K,
    DEFAULT_LEVELS,
    DEFAULT_LID_BATCH,
    DEFAULT_SIGMA,
    DEFAULT_TRAIN_FRACTION,
    DETECTORS,
    DetectionReport,
    DetectionSamples,
    FittedDetectors,
    MinibatchLID,
    advtrain_keys,
    check_detectors,
    check_lid_settings,
    detection_report,
    fit_detectors,
)
from callbacks.detector_views import PairCollector, TrainFeatures, detection_features, model_views
from callbacks.distributed import gather_objects
from callbacks.fit_data import fit_dataloader

DEFAULT_MAX_TRAIN_SAMPLES = 2000


def detection_metrics(report: DetectionReport) -> dict[str, float]:
    """Logged names: ``detect/{attack}/{detector}/auc``, ``detect/{attack}/{detector}/tpr_at_5fpr``,
    ``detect/{attack}/pairs/{split}`` and ``detect/transfer/{source}->{target}/{detector}/auc``."""
    metrics = {
        f"detect/{attack}/{name}/auc": auc for attack, row in report.auc.items() for name, auc in row.items()
    }
    metrics.update({
        f"detect/{attack}/{name}/tpr_at_5fpr": tpr for attack, row in report.tpr.items() for name, tpr in row.items()
    })
    metrics.update({
        f"detect/{attack}/pairs/{split}": float(count)
        for attack, counts in report.pairs.items()
        for split, count in counts.items()
    })
    metrics.update({
        f"detect/transfer/{source}->{target}/{name}/auc": auc
        for source, targets in report.transfer.items()
        for target, row in targets.items()
        for name, auc in row.items()
    })
    return metrics


def within_quota(labels: Tensor, taken: Tensor, quota: int) -> Tensor:
    """Mask of the samples whose class is still under ``quota``, counting them into ``taken`` in place."""
    keep = torch.zeros(len(labels), dtype=torch.bool)
    for row, label in enumerate(labels.tolist()):
        if taken[label] < quota:
            taken[label] += 1
            keep[row] = True
    return keep


class AdversarialDetectionEvaluation(pl.Callback):
    """Detectability of ``attacks`` during ``trainer.test`` of a classifier (Ma et al. 2020, Sec. 5).

    Needs ``pl_module(images)`` (logits), ``pl_module.features(images)`` (penultimate features) and
    ``pl_module.objective()``. AUCs land in ``self.results`` and are logged (``detection_metrics``); the
    protocol and its choices are in docs/adversarial_detection.md. ``adaptive_weight`` (lambda) and
    ``adaptive_kappa`` add each attack made aware of each detector (Carlini & Wagner 2017), in one process.
    """

    def __init__(
        self,
        attacks: Mapping[str, Attack],
        detectors: Sequence[str] = tuple(DETECTORS),
        sigma: float = DEFAULT_SIGMA,
        k: int = DEFAULT_K,
        lid_batch_size: int = DEFAULT_LID_BATCH,
        lid_layers: Sequence[str] = (),
        max_train_samples: int = DEFAULT_MAX_TRAIN_SAMPLES,
        train_fraction: float = DEFAULT_TRAIN_FRACTION,
        successful_only: bool = True,
        transfer_sources: Sequence[str] | None = None,
        quantisation_levels: int = DEFAULT_LEVELS,
        adaptive_weight: float | None = None,
        adaptive_kappa: float = 0.0,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if not attacks:
            raise ValueError("attacks must map at least one name to an attack")
        self.attacks = dict(attacks)
        self.detectors = check_detectors(detectors)
        check_positive("sigma", sigma, allow_zero=False)
        check_lid_settings(k, lid_batch_size)
        check_steps("max_train_samples", max_train_samples)
        if not 0.0 < train_fraction < 1.0:
            raise ValueError(f"train_fraction must be in (0, 1), got {train_fraction!r}")
        if int(quantisation_levels) != quantisation_levels or quantisation_levels < 2:
            raise ValueError(f"quantisation_levels must be an integer >= 2, got {quantisation_levels!r}")
        sources = tuple(self.attacks) if transfer_sources is None else tuple(transfer_sources)
        unknown = [name for name in sources if name not in self.attacks]
        if unknown:
            raise ValueError(f"transfer_sources {unknown} are not among the attacks {tuple(self.attacks)}")
        self.sigma = float(sigma)
        self.k = int(k)
        self.lid_batch_size = int(lid_batch_size)
        self.lid_layers = tuple(lid_layers)
        self.max_train_samples = int(max_train_samples)
        self.train_fraction = float(train_fraction)
        self.successful_only = bool(successful_only)
        self.transfer_sources = sources
        self.quantisation_levels = int(quantisation_levels)
        if adaptive_weight is not None:
            check_positive("adaptive_weight", adaptive_weight, allow_zero=False)
        check_positive("adaptive_kappa", adaptive_kappa)
        self.adaptive_weight = adaptive_weight
        self.adaptive_kappa = float(adaptive_kappa)
        self.seed = seed
        self.results: dict[str, Any] = {}
        self._reset()

    def _reset(self) -> None:
        self._collectors: dict[str, PairCollector] = {}
        self._seen: set[str] = set()
        self._train: TrainFeatures | None = None
        self._tested: list[SeenImages] = []

    def on_test_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        module_name = type(pl_module).__name__
        for method in ("features", "objective"):
            if not callable(getattr(pl_module, method, None)):
                raise ValueError(f"{module_name} needs a {method}() method for adversarial detection")
        for name in self.lid_layers:
            try:
                pl_module.get_submodule(name)
            except AttributeError as error:
                raise ValueError(f"lid_layers: {name!r} is not a submodule of {module_name}") from error
        if self.adaptive_weight is not None and trainer.world_size > 1:
            raise ValueError("adaptive_weight: the detector-aware attacks run in one process; use devices=1")
        self._reset()
        self.results = {}
        use_lid = "lid" in self.detectors
        self._collectors = {
            name: PairCollector(MinibatchLID(self.k, self.lid_batch_size) if use_lid else None)
            for name in self.attacks
        }
        if "kd" in self.detectors:
            self._train = self._training_features(trainer, pl_module)

    def _training_features(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> TrainFeatures:
        """Penultimate features and labels of training images for KD: up to ``max_train_samples`` split
        evenly over the classes, so class-sorted training sets still give every class its density."""
        loader = fit_dataloader(trainer.datamodule, "detector 'kd'")
        features: list[Tensor] = []
        labels: list[Tensor] = []
        taken: Tensor | None = None
        for batch in loader:
            images = batch["image"].to(pl_module.device)
            views = model_views(pl_module, images)
            num_classes = views.logits.shape[1]
            quota = -(-self.max_train_samples // num_classes)
            taken = torch.zeros(num_classes, dtype=torch.long) if taken is None else taken
            target = batch["target"].cpu()
            keep = within_quota(target, taken, quota)
            features.append(views.features[keep.to(views.features.device)])
            labels.append(target[keep].to(pl_module.device))
            if bool((taken >= quota).all()):
                break
        if taken is None:
            raise ValueError(f"{type(trainer.datamodule).__name__}: its training loader yielded no batches for KD")
        missing = (taken == 0).nonzero().flatten().tolist()
        if missing:
            raise ValueError(f"the training split has no image of class(es) {missing} for KD; leave 'kd' out")
        return torch.cat(features), torch.cat(labels)

    def on_test_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        with torch.inference_mode(False), torch.enable_grad():
            images = batch["image"].clone()
            target = batch["target"].clone()
            ids = batch.get("id") or [f"{trainer.global_rank}/{batch_idx}/{i}" for i in range(len(images))]
            keys = [f"{dataloader_idx}/{sample_id}" for sample_id in ids]
            self._seen.update(keys)
            if self.adaptive_weight is not None:
                self._tested.append(SeenImages(images.detach().cpu(), target.cpu(), keys))
            clean = model_views(pl_module, images, self.lid_layers)
            correct = clean.logits.argmax(dim=1) == target
            objective = pl_module.objective()
            for name, attack in self.attacks.items():
                adv_images = attack(objective, images, target, ids=ids).adv_images
                adversarial = model_views(pl_module, adv_images, self.lid_layers)
                fooled = adversarial.logits.argmax(dim=1) != target
                keep = correct & fooled if self.successful_only else correct
                rows = keep.nonzero().flatten()
                kept_clean, kept_adversarial = clean.select(rows), adversarial.select(rows)
                self._collectors[name].add(
                    [keys[i] for i in rows.tolist()],
                    detection_features(kept_clean, self._train, self.sigma),
                    detection_features(kept_adversarial, self._train, self.sigma),
                    kept_clean.layers,
                    kept_adversarial.layers,
                )

    def on_test_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        samples = {name: collector.samples() for name, collector in self._collectors.items()}
        gathered = gather_objects(trainer, (samples, sorted(self._seen)))
        report = None
        if trainer.is_global_zero:
            per_rank = [part[0] for part in gathered]
            merged = {name: DetectionSamples.merge(rank[name] for rank in per_rank) for name in self.attacks}
            seen = (key for part in gathered for key in part[1])
            train_keys = advtrain_keys(seen, self.train_fraction, self.seed)
            fitted = fit_detectors(merged, train_keys, self.detectors, self.seed, self.quantisation_levels)
            report = detection_report(fitted, self.transfer_sources)
            if self.adaptive_weight is not None:
                with torch.inference_mode(False), torch.enable_grad():
                    self._add_adaptive_rows(report, pl_module, fitted, train_keys)
        report = trainer.strategy.broadcast(report, src=0)
        self._reset()
        self.results = asdict(report)
        for name, value in detection_metrics(report).items():
            pl_module.log(name, value, sync_dist=True)

    def _add_adaptive_rows(
        self, report: DetectionReport, pl_module: pl.LightningModule, fitted: FittedDetectors, train_keys: set[str]
    ) -> None:
        """Rows ``{attack}-adaptive``: each detector against the attack made aware of it, on AdvTest."""
        tested = SeenImages(
            torch.cat([part.images for part in self._tested]),
            torch.cat([part.target for part in self._tested]),
            [key for part in self._tested for key in part.keys],
        )
        advtest = tested.select(set(tested.keys) - train_keys)
        runs = DetectorAwareAttacks(self._train, self.sigma, self.k, self.lid_batch_size, self.lid_layers,
                                    self.adaptive_weight, self.adaptive_kappa, self.successful_only)
        auc, tpr, pairs = runs.run(pl_module, self.attacks, fitted, advtest, runs.reference(pl_module, tested),
                                   self.detectors)
        report.auc |= auc
        report.tpr |= tpr
        report.pairs |= pairs
