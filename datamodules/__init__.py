"""Datamodules: batches ``{"image": (B, C, H, W) in [0, 1], "target", "id"}`` for every task."""

from __future__ import annotations

from datamodules.base import MedicalDataModule
from datamodules.endoscopy import EndoscopyArtefactDataModule
from datamodules.fundus import FundusDRDataModule
from datamodules.lung import LungSegmentationDataModule
from datamodules.medmnist import MedMNISTDataModule
from datamodules.paths import shared_data_dir
from datamodules.synthetic import (
    SyntheticEndoscopyDataModule,
    SyntheticFundusDataModule,
    SyntheticLungCTDataModule,
)

DATAMODULES: dict[str, type[MedicalDataModule]] = {
    "medmnist": MedMNISTDataModule,
    "fundus_dr": FundusDRDataModule,
    "lung_segmentation": LungSegmentationDataModule,
    "endoscopy_artefacts": EndoscopyArtefactDataModule,
    "synthetic_fundus": SyntheticFundusDataModule,
    "synthetic_lung_ct": SyntheticLungCTDataModule,
    "synthetic_endoscopy": SyntheticEndoscopyDataModule,
}


def create_datamodule(name: str, **kwargs) -> MedicalDataModule:
    """The datamodule registered under ``name``, built with ``kwargs`` (as from a config file)."""
    if name not in DATAMODULES:
        raise ValueError(f"unknown datamodule {name!r}; known: {sorted(DATAMODULES)}")
    return DATAMODULES[name](**kwargs)


__all__ = [
    "DATAMODULES",
    "EndoscopyArtefactDataModule",
    "FundusDRDataModule",
    "LungSegmentationDataModule",
    "MedMNISTDataModule",
    "MedicalDataModule",
    "SyntheticEndoscopyDataModule",
    "SyntheticFundusDataModule",
    "SyntheticLungCTDataModule",
    "create_datamodule",
    "shared_data_dir",
]
