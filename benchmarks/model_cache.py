"""Trained models for benchmark cells: trained once per model spec, cached as a state dict keyed by the
hash of its train config, overrides and seed, and loaded back with ``torch.load(weights_only=True)``. A cache
file that does not load (truncated, garbage, a pickle that is more than tensors, weights of another shape) is
named, moved aside as ``<name>.corrupt-<time>`` and the model trained again, so one bad file blocks nothing.
Training that runs out of CUDA memory is retried with half the batch size (``fit_halving_on_oom``); the cache
file records the batch size the model was trained with."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from filelock import FileLock

from benchmarks.grid import ModelSpec
from benchmarks.training import MIN_TRAIN_BATCH_SIZE, build_cli, fit_halving_on_oom


@dataclass
class TrainedModel:
    """A task module ready for ``trainer.test``, the datamodule it was trained on (at the config's batch size)
    and the batch size it was trained with (None: a datamodule without ``batch_size``, or a cache file written
    before the size was recorded)."""

    spec: ModelSpec
    module: pl.LightningModule
    datamodule: pl.LightningDataModule
    checkpoint: Path
    trained: bool
    batch_size: int | None = None


def checkpoint_path(spec: ModelSpec, cache_dir: Path) -> Path:
    """The cache file of a model: named by what it is (train config, overrides, seed), not by its labels, so
    every dataset and model label of any benchmark that trains the same model shares one file."""
    return cache_dir / f"{spec.train_config.stem}-seed{spec.seed}-{spec.digest}.pt"


def load_or_train(
    spec: ModelSpec, cache_dir: Path, trainer_args: Sequence[str] = (), min_batch_size: int = MIN_TRAIN_BATCH_SIZE,
    callbacks: Sequence[pl.Callback] = (), exclusive: bool = False,
) -> TrainedModel:
    """The module of ``spec``: loaded from the cache when present, else trained (with ``callbacks``, and with half
    the batch size after a CUDA out-of-memory error, down to ``min_batch_size``) and cached (rank 0 writes,
    atomically, so a run killed while saving leaves no half-written checkpoint). ``exclusive`` (one-process runs
    that share a cache): hold the model's lock file meanwhile, so that of several processes needing the model one
    trains it and the others wait, then load it; a process that dies releases its lock."""
    path = checkpoint_path(spec, cache_dir)
    if not exclusive:
        return cached_or_trained(spec, path, trainer_args, min_batch_size, callbacks)
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(path.with_name(f"{path.name}.lock")):
        return cached_or_trained(spec, path, trainer_args, min_batch_size, callbacks)


def cached_or_trained(
    spec: ModelSpec, path: Path, trainer_args: Sequence[str], min_batch_size: int, callbacks: Sequence[pl.Callback]
) -> TrainedModel:
    """:func:`load_or_train` for the cache file ``path``, without a lock."""
    cache_dir = path.parent
    args = [*spec.args, *trainer_args]
    if path.is_file():
        cli = build_cli(spec.train_config, cache_dir / "logs", args)
        cached = load_cached(path, cli.model)
        if cached is not None:
            return TrainedModel(spec, spec.evaluated(cli.model), cli.datamodule, path, trained=False,
                                batch_size=cached.get("batch_size"))
    cli, batch_size = fit_halving_on_oom(spec.train_config, cache_dir / "logs", args, min_batch_size, callbacks)
    if cli.trainer.is_global_zero:
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(f".partial-{os.getpid()}")
        state = cli.model.state_dict()
        torch.save({"state_dict": state, "digest": spec.digest, "args": spec.args, "batch_size": batch_size}, partial)
        os.replace(partial, path)
    return TrainedModel(spec, spec.evaluated(cli.model), cli.datamodule, path, trained=True, batch_size=batch_size)


def load_cached(path: Path, model: pl.LightningModule) -> dict[str, Any] | None:
    """Load the cached state dict at ``path`` into ``model`` and return the file's contents; when it does not
    load, say so, move the file aside (:func:`quarantine`) and return None. ``weights_only`` still refuses
    anything but tensors and plain values."""
    try:
        cached = torch.load(path, map_location="cpu", weights_only=True)
        model.load_state_dict(cached["state_dict"])
    except Exception as error:  # RuntimeError, UnpicklingError, EOFError from torch; KeyError, TypeError from the dict
        reason = str(error).strip().splitlines()[0] if str(error).strip() else ""
        moved = quarantine(path)
        print(f"model cache {path} does not load ({type(error).__name__}: {reason[:200]}); moved to {moved} and "
              "training the model again", file=sys.stderr)
        return None
    return cached


def quarantine(path: Path) -> Path:
    """Move ``path`` to ``<name>.corrupt-<UTC time>-<pid>`` beside it (another process may have moved it first)."""
    target = path.with_name(f"{path.name}.corrupt-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}-{os.getpid()}")
    try:
        os.replace(path, target)
    except FileNotFoundError:
        pass
    return target
