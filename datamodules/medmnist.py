"""MedMNIST 2D sets from their local ``.npz`` files, with the official train/val/test split."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from datamodules.base import MedicalDataModule, check_positive
from datamodules.io import npz_array, open_npz
from datamodules.pipeline import Example
from datamodules.splits import SPLITS

CLASS_NAMES = {
    "retinamnist": ["grade 0", "grade 1", "grade 2", "grade 3", "grade 4"],
    "breastmnist": ["malignant", "normal or benign"],
    "pneumoniamnist": ["normal", "pneumonia"],
}


def _labels(path: Path, archive: np.lib.npyio.NpzFile, split: str) -> np.ndarray:
    labels = npz_array(path, archive, f"{split}_labels")
    if labels.ndim == 2 and labels.shape[1] == 1:
        labels = labels[:, 0]
    if labels.ndim != 1:
        raise ValueError(
            f"{path}: {split}_labels has shape {labels.shape}; only single-label sets ((N,) or (N, 1)) "
            "are supported"
        )
    if labels.dtype.kind not in "biuf":
        raise ValueError(f"{path}: {split}_labels must be whole numbers, got dtype {labels.dtype}")
    if labels.dtype.kind == "f" and not (np.isfinite(labels) & (labels % 1 == 0)).all():
        bad = labels[~(np.isfinite(labels) & (labels % 1 == 0))]
        raise ValueError(f"{path}: {split}_labels must be whole numbers, got {bad[:3].tolist()}")
    return labels.astype(np.int64)


def _images(path: Path, archive: np.lib.npyio.NpzFile, split: str, count: int) -> np.ndarray:
    images = npz_array(path, archive, f"{split}_images")
    grey = images.ndim == 3
    if not (grey or (images.ndim == 4 and images.shape[3] == 3)) or images.dtype != np.uint8:
        raise ValueError(
            f"{path}: {split}_images must be uint8 (N, H, W) or (N, H, W, 3), "
            f"got {images.dtype} {images.shape}"
        )
    if images.shape[0] != count:
        raise ValueError(f"{path}: {split}_images has {images.shape[0]} images but {count} labels")
    return images[..., None] if grey else images


class MedMNISTDataModule(MedicalDataModule):
    """A MedMNIST 2D classification set read from ``{root}/{flag}.npz`` (Yang et al., 2023).

    ``num_classes`` defaults to the largest label + 1; an explicit value is checked against the labels.
    ``test_samples`` keeps a random subset (seeded by ``seed``) of that many test images, in random order: a
    short evaluation that is not one class only (some files list their test split sorted by label).
    """

    task = "classification"

    def __init__(
        self,
        flag: str,
        root: str,
        size: int = 28,
        channels: int = 3,
        num_classes: int | None = None,
        batch_size: int = 32,
        num_workers: int = 0,
        seed: int = 0,
        augment: bool = True,
        flip_p: float = 0.5,
        rotate_limit: float = 10.0,
        shift_limit: float = 0.05,
        test_samples: int | None = None,
    ) -> None:
        super().__init__(
            size,
            channels,
            batch_size,
            num_workers,
            seed,
            augment=augment,
            flip_p=flip_p,
            rotate_limit=rotate_limit,
            shift_limit=shift_limit,
        )
        if test_samples is not None:
            check_positive("test_samples", test_samples)
        self.test_samples = test_samples
        self.flag = flag
        self.path = Path(root) / f"{flag}.npz"
        if not self.path.is_file():
            raise FileNotFoundError(f"MedMNIST file not found: {self.path} (flag={flag!r}, root={root!r})")
        with open_npz(self.path) as archive:
            expected = {f"{split}_{kind}" for split in SPLITS for kind in ("images", "labels")}
            missing = sorted(expected - set(archive.files))
            if missing:
                raise ValueError(f"{self.path}: missing keys {missing}; found {sorted(archive.files)}")
            labels = np.concatenate([_labels(self.path, archive, split) for split in SPLITS])
        largest = int(labels.max())
        if labels.min() < 0:
            raise ValueError(f"{self.path}: negative label {int(labels.min())}")
        if num_classes is None:
            num_classes = largest + 1
        elif largest >= num_classes:
            raise ValueError(f"num_classes={num_classes} but {self.path} holds label {largest}")
        self.num_classes = num_classes
        names = CLASS_NAMES.get(flag, [])
        self.class_names = names if len(names) == num_classes else [str(k) for k in range(num_classes)]
        self._arrays: dict[str, tuple[np.ndarray, np.ndarray]] = {}

    def build_splits(self) -> dict[str, list[tuple[str, int]]]:
        with open_npz(self.path) as archive:
            for split in SPLITS:
                labels = _labels(self.path, archive, split)
                self._arrays[split] = (_images(self.path, archive, split, len(labels)), labels)
        splits = {split: [(split, i) for i in range(len(labels))] for split, (_, labels) in self._arrays.items()}
        if self.test_samples is not None:
            if self.test_samples > len(splits["test"]):
                count = len(splits["test"])
                raise ValueError(f"test_samples={self.test_samples} but {self.path} has {count} test images")
            order = np.random.default_rng(self.seed).permutation(len(splits["test"]))[: self.test_samples]
            splits["test"] = [splits["test"][i] for i in order]
        return splits

    def load_example(self, record: tuple[str, int]) -> Example:
        split, index = record
        images, labels = self._arrays[split]
        return Example(images[index], int(labels[index]), f"{self.flag}/{split}/{index}")
