"""Trained models for benchmark cells: trained once per model spec, cached as a state dict keyed by the
hash of its train config, overrides and seed, and loaded back with ``torch.load(weights_only=True)``."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import lightning.pytorch as pl
import torch

from benchmarks.grid import ModelSpec
from benchmarks.training import build_cli


@dataclass
class TrainedModel:
    """A task module ready for ``trainer.test`` and the datamodule it was trained on."""

    spec: ModelSpec
    module: pl.LightningModule
    datamodule: pl.LightningDataModule
    checkpoint: Path
    trained: bool


def checkpoint_path(spec: ModelSpec, cache_dir: Path) -> Path:
    """The cache file of a model: named by what it is (train config, overrides, seed), not by its labels, so
    every dataset and model label of any benchmark that trains the same model shares one file."""
    return cache_dir / f"{spec.train_config.stem}-seed{spec.seed}-{spec.digest}.pt"


def load_or_train(spec: ModelSpec, cache_dir: Path, trainer_args: Sequence[str] = ()) -> TrainedModel:
    """The module of ``spec``: loaded from the cache when present, else trained and cached (rank 0 writes,
    atomically, so a run killed while saving leaves no half-written checkpoint)."""
    path = checkpoint_path(spec, cache_dir)
    cli = build_cli(spec.train_config, cache_dir / "logs", [*spec.args, *trainer_args])
    if path.is_file():
        state = torch.load(path, map_location="cpu", weights_only=True)
        cli.model.load_state_dict(state["state_dict"])
        return TrainedModel(spec, cli.model, cli.datamodule, path, trained=False)
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    if cli.trainer.is_global_zero:
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(f".partial-{os.getpid()}")
        torch.save({"state_dict": cli.model.state_dict(), "digest": spec.digest, "args": spec.args}, partial)
        os.replace(partial, path)
    return TrainedModel(spec, cli.model, cli.datamodule, path, trained=True)
