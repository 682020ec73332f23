"""Datamodules: batches ``{"image": (B, C, H, W) in [0, 1], "target", "id"}`` for every task.

Configs name a datamodule by its import path (LightningCLI's ``class_path: datamodules.MedMNISTDataModule``);
``from datamodules import MedMNISTDataModule`` is the same class in Python.
"""

from __future__ import annotations

from datamodules.base import MedicalDataModule
from datamodules.endoscopy import EndoscopyArtefactDataModule
from datamodules.fundus import FundusDRDataModule
from datamodules.lung import LungSegmentationDataModule
from datamodules.lung_fields import LungFieldDetectionDataModule
from datamodules.medmnist import MedMNISTDataModule
from datamodules.paths import shared_data_dir
from datamodules.polyps import PolypDetectionDataModule
from datamodules.synthetic import (
    SyntheticEndoscopyDataModule,
    SyntheticFundusDataModule,
    SyntheticLungCTDataModule,
)

__all__ = [
    "EndoscopyArtefactDataModule",
    "FundusDRDataModule",
    "LungFieldDetectionDataModule",
    "LungSegmentationDataModule",
    "MedMNISTDataModule",
    "MedicalDataModule",
    "PolypDetectionDataModule",
    "SyntheticEndoscopyDataModule",
    "SyntheticFundusDataModule",
    "SyntheticLungCTDataModule",
    "shared_data_dir",
]
