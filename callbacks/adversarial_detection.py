"""Adversarial-example detection inside ``trainer.test`` (Ma et al. 2020, Sec. 5): every test batch is
attacked, detection features of the clean and adversarial images are collected, and after the epoch the
KD, LID, DFeat and QFeat detectors are fitted on AdvTrain and scored on AdvTest (Tables 4 and 5)."""

from __future__ import annotations

import contextlib
from collections import defaultdict
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import lightning.pytorch as pl
import torch
from torch import Tensor, nn

from attacks.base import Attack, check_positive, check_steps, frozen_model
from callbacks.detector_features import (
    DEFAULT_K,
    DEFAULT_LEVELS,
    DEFAULT_LID_BATCH,
    DEFAULT_SIGMA,
    DEFAULT_TRAIN_FRACTION,
    DETECTORS,
    DetectionReport,
    DetectionSamples,
    MinibatchLID,
    advtrain_keys,
    check_detectors,
    check_lid_settings,
    evaluate_detectors,
    kernel_density,
)
from callbacks.distributed import gather_objects
from callbacks.fit_data import fit_dataloader

DEFAULT_MAX_TRAIN_SAMPLES = 2000


@dataclass
class ModelViews:
    """What the detectors read from a model for a batch of images: logits, penultimate features and the
    LID layers (the hooked submodule outputs, then the features, then the logits)."""

    logits: Tensor
    features: Tensor
    layers: list[Tensor]

    def select(self, rows: Tensor) -> ModelViews:
        return ModelViews(self.logits[rows], self.features[rows], [layer[rows] for layer in self.layers])


@contextlib.contextmanager
def captured_outputs(module: nn.Module, names: Sequence[str]) -> Iterator[dict[str, Tensor]]:
    """The latest output of each named submodule of ``module`` while the context is open."""
    outputs: dict[str, Tensor] = {}

    def keep(name: str):
        def hook(_: nn.Module, __: Any, output: Any) -> None:
            outputs[name] = output[0] if isinstance(output, (tuple, list)) else output
        return hook

    handles = [module.get_submodule(name).register_forward_hook(keep(name)) for name in names]
    try:
        yield outputs
    finally:
        for handle in handles:
            handle.remove()


def model_views(pl_module: pl.LightningModule, images: Tensor, layer_names: Sequence[str] = ()) -> ModelViews:
    """Logits, ``pl_module.features`` and the named layers' outputs, in eval mode without gradients."""
    with frozen_model(pl_module), torch.no_grad():
        features = pl_module.features(images)
        with captured_outputs(pl_module, layer_names) as outputs:
            logits = pl_module(images)
    layers = [outputs[name].flatten(1) for name in layer_names] + [features, logits]
    return ModelViews(logits, features, layers)


def detection_metrics(report: DetectionReport) -> dict[str, float]:
    """Logged names: ``detect/{attack}/{detector}/auc``, ``detect/{attack}/pairs/{advtrain,advtest}`` and
    ``detect/transfer/{source}->{target}/{detector}/auc``."""
    metrics = {
        f"detect/{attack}/{name}/auc": auc for attack, row in report.auc.items() for name, auc in row.items()
    }
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


class PairCollector:
    """The kept (clean, adversarial) pairs of one attack on this rank, on the CPU."""

    def __init__(self, lid: MinibatchLID | None) -> None:
        self.keys: list[str] = []
        self.clean: dict[str, list[Tensor]] = defaultdict(list)
        self.adversarial: dict[str, list[Tensor]] = defaultdict(list)
        self.lid = lid

    def add(self, keys: list[str], clean: dict[str, Tensor], adversarial: dict[str, Tensor],
            clean_layers: list[Tensor], adversarial_layers: list[Tensor]) -> None:
        self.keys += keys
        for name in clean:
            self.clean[name].append(clean[name].detach().double().cpu())
            self.adversarial[name].append(adversarial[name].detach().double().cpu())
        if self.lid is not None:
            self.lid.add(clean_layers, adversarial_layers)

    def samples(self) -> DetectionSamples:
        clean = {name: torch.cat(parts).numpy() for name, parts in self.clean.items()}
        adversarial = {name: torch.cat(parts).numpy() for name, parts in self.adversarial.items()}
        if self.lid is not None:
            clean["lid"], adversarial["lid"] = (lids.numpy() for lids in self.lid.finish())
        return DetectionSamples(list(self.keys), clean, adversarial)


class AdversarialDetectionEvaluation(pl.Callback):
    """Detectability of ``attacks`` during ``trainer.test`` of a classifier (Ma et al. 2020, Sec. 5).

    Needs ``pl_module(images)`` (logits), ``pl_module.features(images)`` (penultimate features) and
    ``pl_module.objective()``. AUCs land in ``self.results`` and are logged (``detection_metrics``); the
    protocol and its choices are in docs/adversarial_detection.md.
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
        self.seed = seed
        self.results: dict[str, Any] = {}
        self._reset()

    def _reset(self) -> None:
        self._collectors: dict[str, PairCollector] = {}
        self._seen: set[str] = set()
        self._train: tuple[Tensor, Tensor] | None = None

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
        self._reset()
        self.results = {}
        use_lid = "lid" in self.detectors
        self._collectors = {
            name: PairCollector(MinibatchLID(self.k, self.lid_batch_size) if use_lid else None)
            for name in self.attacks
        }
        if "kd" in self.detectors:
            self._train = self._training_features(trainer, pl_module)

    def _training_features(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> tuple[Tensor, Tensor]:
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

    def _detection_features(self, views: ModelViews) -> dict[str, Tensor]:
        features = {"deep": views.features}
        if self._train is not None:
            predicted = views.logits.argmax(dim=1)
            features["kd"] = kernel_density(views.features, *self._train, predicted, self.sigma).unsqueeze(1)
        return features

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
                    self._detection_features(kept_clean),
                    self._detection_features(kept_adversarial),
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
            report = evaluate_detectors(
                merged,
                advtrain_keys(seen, self.train_fraction, self.seed),
                self.detectors,
                self.transfer_sources,
                self.seed,
                self.quantisation_levels,
            )
        report = trainer.strategy.broadcast(report, src=0)
        self._reset()
        self.results = asdict(report)
        for name, value in detection_metrics(report).items():
            pl_module.log(name, value, sync_dist=True)
