"""Task models fitted in seconds on the synthetic datamodules, for tests and session-scoped fixtures.

Each ``fit_*`` returns the fitted module (in eval mode) and its datamodule; ``held_out_scores`` runs
``trainer.test`` on the test split and returns the logged epoch metrics.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning as L
import torch

from datamodules import (
    LungSegmentationDataModule,
    MedMNISTDataModule,
    SyntheticEndoscopyDataModule,
    SyntheticFundusDataModule,
    SyntheticLungCTDataModule,
)
from lightning_modules.classifier import ClassifierModule
from lightning_modules.detector import DetectorModule
from lightning_modules.segmenter import SegmenterModule
from lightning_modules.task_module import TaskModule


def quick_trainer(max_epochs: int = 1, **options: Any) -> L.Trainer:
    """A single-process CPU trainer without logger, checkpoints, progress bar or validation."""
    return L.Trainer(
        **options,
        max_epochs=max_epochs,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
    )


def fit(
    build: Callable[[], TaskModule], datamodule: L.LightningDataModule, max_epochs: int, **options: Any
) -> TaskModule:
    """Build the module and fit it from a fixed seed; ``options`` go to the Trainer (``limit_train_batches``).

    The seed comes before ``build`` so the initial weights are fixed too: the session fixtures are set up
    before the per-test seeding, so without it they would depend on the random draws of the tests run
    before (another model under ``make test`` than when one test runs alone)."""
    torch.manual_seed(0)
    module = build()
    quick_trainer(max_epochs, **options).fit(module, datamodule=datamodule)
    return module.eval()


def held_out_scores(module: TaskModule, datamodule: L.LightningDataModule) -> dict[str, float]:
    """The epoch metrics ``trainer.test`` logs for ``module`` on the datamodule's test split."""
    (scores,) = quick_trainer().test(module, datamodule=datamodule, verbose=False)
    return {name: float(value) for name, value in scores.items()}


def fit_classifier() -> tuple[ClassifierModule, SyntheticFundusDataModule]:
    """resnet18 grading 5 synthetic DR grades from 64-pixel fundus images."""
    datamodule = SyntheticFundusDataModule(num_samples=400, size=64, seed=0, batch_size=32)

    def build() -> ClassifierModule:
        return ClassifierModule("resnet18", num_classes=datamodule.num_classes, in_channels=datamodule.in_channels)

    return fit(build, datamodule, max_epochs=6), datamodule


def fit_segmenter() -> tuple[SegmenterModule, SyntheticLungCTDataModule]:
    """U-Net (resnet18 encoder, small decoder) segmenting lungs on 64-pixel synthetic CT slices."""
    datamodule = SyntheticLungCTDataModule(num_samples=160, size=64, seed=0, batch_size=8)
    module = fit(lambda: SegmenterModule(in_channels=datamodule.in_channels, classes=1, lr=3e-3), datamodule, 3)
    return module, datamodule


def fit_detector() -> tuple[DetectorModule, SyntheticEndoscopyDataModule]:
    """Faster R-CNN on the small from-scratch backbone (the default run's detector) on 96-pixel synthetic
    endoscopy frames with artefact boxes: 140 training frames, 6 epochs (108 steps of 8)."""
    datamodule = SyntheticEndoscopyDataModule(num_samples=200, size=96, seed=0, batch_size=8, rotate_limit=0)

    def build() -> DetectorModule:
        return DetectorModule(
            "small",
            num_classes=datamodule.num_classes,
            min_size=96,
            max_size=96,
            rpn_samples_per_image=64,
            roi_samples_per_image=64,
            lr=2e-3,
        )

    return fit(build, datamodule, max_epochs=6), datamodule


def fit_retinamnist_classifier(data_dir: Path) -> tuple[ClassifierModule, MedMNISTDataModule]:
    """resnet18 grading diabetic retinopathy (5 grades) on RetinaMNIST's 28-pixel fundus images."""
    datamodule = MedMNISTDataModule("retinamnist", str(data_dir / "medmnist"), size=28, num_classes=5)
    return fit(lambda: ClassifierModule("resnet18", num_classes=5, lr=2e-3), datamodule, max_epochs=3), datamodule


def fit_cxr_segmenter(data_dir: Path) -> tuple[SegmenterModule, LungSegmentationDataModule]:
    """U-Net segmenting lungs on 64-pixel chest X-rays (Montgomery and Shenzhen sets)."""
    datamodule = LungSegmentationDataModule(str(data_dir / "cxr_lung_seg"), size=64, batch_size=8)
    return fit(lambda: SegmenterModule(lr=3e-3), datamodule, max_epochs=1, limit_train_batches=40), datamodule
