"""The shared datamodule machinery: argument checks, splits to datasets, dataloaders and collation."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler
from torch.utils.data import DataLoader, Dataset, get_worker_info

from datamodules.pipeline import TASKS, Example, Pipeline, build_augmentation
from datamodules.splits import SPLITS, check_fractions

PLAIN_TRAIN = "train, un-augmented"

Batch = dict[str, Any]


class ExampleDataset(Dataset):
    """Records of one split, loaded by ``load`` and turned into sample dicts by ``pipeline``."""

    def __init__(self, records: Sequence[Any], load: Callable[[Any], Example], pipeline: Pipeline) -> None:
        self.records = records
        self.load = load
        self.pipeline = pipeline

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.pipeline(self.load(self.records[index]))


def collate(samples: list[dict[str, Any]]) -> Batch:
    """Stack images and tensor targets; detection targets (dicts) stay a list, ids a list of str."""
    targets = [sample["target"] for sample in samples]
    return {
        "image": torch.stack([sample["image"] for sample in samples]),
        "target": targets if isinstance(targets[0], dict) else torch.stack(targets),
        "id": [sample["id"] for sample in samples],
    }


def _reseed_worker(worker_id: int) -> None:
    """Give each dataloader worker its own augmentation stream, derived from the loader's seed."""
    info = get_worker_info()
    info.dataset.pipeline.reseed(torch.initial_seed() % 2**32)


def check_positive(name: str, value: float) -> None:
    """Raise ValueError naming ``name`` unless ``value`` > 0."""
    if not value > 0:
        raise ValueError(f"{name} must be positive, got {value}")


class MedicalDataModule(pl.LightningDataModule):
    """Base of every datamodule: batches ``{"image", "target", "id"}`` with images in [0, 1].

    Subclasses set ``task``, ``num_classes`` and ``class_names`` and implement ``build_splits`` (the
    records of each split) and ``load_example`` (one record to an ``Example``). They take their own
    arguments and pass the loader, split and augmentation settings below on as ``**options``.
    """

    task: str
    num_classes: int
    class_names: list[str]

    def __init__(
        self,
        size: int,
        channels: int,
        batch_size: int = 32,
        num_workers: int = 0,
        seed: int = 0,
        val_fraction: float = 0.1,
        test_fraction: float = 0.2,
        augment: bool = True,
        flip_p: float = 0.5,
        rotate_limit: float = 10.0,
        shift_limit: float = 0.05,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        check_positive("size", size)
        check_positive("batch_size", batch_size)
        if channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, got {channels}")
        if num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {num_workers}")
        check_fractions(val_fraction, test_fraction)
        if not 0.0 <= flip_p <= 1.0:
            raise ValueError(f"flip_p must be in [0, 1], got {flip_p}")
        if rotate_limit < 0 or shift_limit < 0:
            raise ValueError(f"rotate_limit and shift_limit must be >= 0, got {rotate_limit}, {shift_limit}")
        self.image_size = size
        self.in_channels = channels
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.seed = seed
        self.val_fraction = val_fraction
        self.test_fraction = test_fraction
        self.augment = augment
        self.flip_p = flip_p
        self.rotate_limit = rotate_limit
        self.shift_limit = shift_limit
        self.datasets: dict[str, ExampleDataset] = {}
        self.plain_train: ExampleDataset | None = None

    def build_splits(self) -> dict[str, Sequence[Any]]:
        """The records of each split ("train", "val", "test"), deterministic from ``seed``."""
        raise NotImplementedError

    def load_example(self, record: Any) -> Example:
        """Read one record into an ``Example``."""
        raise NotImplementedError

    def setup(self, stage: str | None = None) -> None:
        if self.datasets:
            return
        if self.task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}, got {self.task!r}")
        splits = self.build_splits()
        for split in SPLITS:
            augmentation = None
            if split == "train" and self.augment:
                augmentation = build_augmentation(
                    self.task, self.flip_p, self.rotate_limit, self.shift_limit, self.seed
                )
            pipeline = Pipeline(self.image_size, self.in_channels, augmentation)
            self.datasets[split] = ExampleDataset(splits[split], self.load_example, pipeline)
        plain = Pipeline(self.image_size, self.in_channels, None)
        self.plain_train = ExampleDataset(splits["train"], self.load_example, plain)

    def _evaluation_sampler(self, dataset: Dataset) -> UnrepeatedDistributedSampler | None:
        """Under DDP, each process's share of an evaluation split without the padding repeats that a
        DistributedSampler adds (so epoch metrics equal the one-process ones); None otherwise."""
        trainer = self.trainer
        if trainer is None or trainer.world_size <= 1:
            return None
        return UnrepeatedDistributedSampler(
            dataset, num_replicas=trainer.world_size, rank=trainer.global_rank, shuffle=False
        )

    def _loader(self, split: str, shuffle: bool, distributed: bool = True) -> DataLoader:
        if not self.datasets:
            self.setup()
        dataset = self.plain_train if split == PLAIN_TRAIN else self.datasets[split]
        sampler = None if shuffle or not distributed else self._evaluation_sampler(dataset)
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            shuffle=shuffle,
            sampler=sampler,
            drop_last=shuffle and len(dataset) > self.batch_size,  # a batch of 1 breaks BatchNorm
            num_workers=self.num_workers,
            collate_fn=collate,
            generator=torch.Generator().manual_seed(self.seed),
            worker_init_fn=_reseed_worker if self.num_workers > 0 else None,
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def fit_dataloader(self) -> DataLoader:
        """The training split in order and without augmentation, whole on every DDP rank: what
        data-dependent attacks (universal perturbations) and detectors (KD) fit on."""
        return self._loader(PLAIN_TRAIN, shuffle=False, distributed=False)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)
