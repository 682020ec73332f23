"""Fit one task model from a LightningCLI YAML config (model + data + trainer) and save a checkpoint. A CUDA
out-of-memory error during the fit retrains the model from scratch with half the datamodule's batch size."""

from __future__ import annotations

import sys
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from jsonargparse import Namespace
from lightning.pytorch import Callback, LightningDataModule, LightningModule
from lightning.pytorch.cli import LightningCLI

from callbacks.batch_size import halving_on_oom

MIN_TRAIN_BATCH_SIZE = 2  # the floor of the halving: a training batch of one breaks BatchNorm


@dataclass
class TrainResult:
    """What one training run produced: its name, checkpoint, clean test metrics, wall time and the batch size
    it trained with (None: a datamodule without ``batch_size``)."""

    name: str
    checkpoint: Path
    metrics: dict[str, float]
    seconds: float
    batch_size: int | None = None


class ParsedConfig(LightningCLI):
    """A LightningCLI that parses and type-checks its config (defaults filled in) and builds nothing."""

    def instantiate_classes(self) -> None:
        return None


def build_cli(
    config: Path, output: Path, overrides: Sequence[str] = (), callbacks: Sequence[Callback] = ()
) -> LightningCLI:
    """Parse a config (``model``/``data`` as class_path + init_args, ``trainer``) and build its model,
    datamodule and trainer (with ``callbacks`` beside the config's), without running anything."""
    return make_cli(LightningCLI, config, output, overrides, callbacks=callbacks)


def parse_train_config(config: Path, overrides: Sequence[str] = ()) -> Namespace:
    """The config with ``overrides`` as :func:`build_cli` reads it (types checked, defaults filled in),
    without building anything; a bad key or value raises jsonargparse's ``ArgumentError``."""
    return make_cli(ParsedConfig, config, Path("."), overrides, parser_kwargs={"exit_on_error": False}).config


def make_cli(
    cli_class: type[LightningCLI], config: Path, output: Path, overrides: Sequence[str],
    callbacks: Sequence[Callback] = (), **options: Any,
) -> LightningCLI:
    """``cli_class`` on a train config with overrides: the model and data classes, trainer defaults and
    logging that every training and every check of a config share, and ``callbacks`` for every trainer."""
    with warnings.catch_warnings():  # the `medadv` command's own sys.argv is not meant for this parser
        warnings.filterwarnings("ignore", message=".*args parameter is intended to run from within Python")
        return cli_class(
            LightningModule,
            LightningDataModule,
            subclass_mode_model=True,
            subclass_mode_data=True,
            args=["--config", str(config), *overrides],
            run=False,
            save_config_callback=None,
            seed_everything_default=0,
            trainer_defaults={
                "default_root_dir": str(output),
                "accelerator": "auto",
                "enable_checkpointing": False,
                "enable_progress_bar": False,
                "enable_model_summary": False,
                "callbacks": list(callbacks),  # LightningCLI adds these to the config's callbacks
                "logger": {
                    "class_path": "lightning.pytorch.loggers.CSVLogger",
                    "init_args": {"save_dir": str(output), "name": config.stem},
                },
            },
            **options,
        )


def fit_halving_on_oom(
    config: Path, output: Path, overrides: Sequence[str] = (), min_batch_size: int = MIN_TRAIN_BATCH_SIZE,
    callbacks: Sequence[Callback] = (),
) -> tuple[LightningCLI, int | None]:
    """The config's CLI (:func:`build_cli`) with its model fitted. After a CUDA out-of-memory error the CLI is
    built again (a fresh model, seeded as the first) and fitted with half the datamodule's batch size, down to
    ``min_batch_size``; at the floor one ``OutOfMemoryError`` names the config and every size tried. Returns the
    CLI, its datamodule back at the config's batch size, and the batch size the model was trained with
    (None: a datamodule without ``batch_size``, fitted as it is). ``callbacks``: for each trainer."""
    cli = build_cli(config, output, overrides, callbacks)
    requested = getattr(cli.datamodule, "batch_size", None)
    if not isinstance(requested, int):
        cli.trainer.fit(cli.model, datamodule=cli.datamodule)
        return cli, None
    tried: list[int] = []

    def attempt(size: int) -> LightningCLI:
        fresh = build_cli(config, output, overrides, callbacks) if tried else cli
        tried.append(size)
        fresh.datamodule.batch_size = size
        fresh.trainer.fit(fresh.model, datamodule=fresh.datamodule)
        fresh.datamodule.batch_size = requested
        return fresh

    def retried(size: int, smaller: int) -> None:
        print(f"training {config}: CUDA out of memory at batch size {size}; training again from scratch with "
              f"{smaller}", file=sys.stderr)

    floor = min(min_batch_size, requested)
    try:
        return halving_on_oom(attempt, requested, floor, retried)
    except torch.cuda.OutOfMemoryError as error:
        sizes = ", ".join(map(str, tried))
        raise torch.cuda.OutOfMemoryError(
            f"training {config} ran out of CUDA memory at every batch size tried ({sizes}; the floor is {floor})"
        ) from error


def train_from_config(
    config: Path, output: Path, overrides: Sequence[str] = (), min_batch_size: int = MIN_TRAIN_BATCH_SIZE
) -> TrainResult:
    """Fit (:func:`fit_halving_on_oom`), test on the held-out split, and save ``{output}/{config stem}.ckpt``."""
    start = time.perf_counter()
    cli, batch_size = fit_halving_on_oom(config, output, overrides, min_batch_size)
    (metrics,) = cli.trainer.test(cli.model, datamodule=cli.datamodule, verbose=False)
    checkpoint = output / f"{config.stem}.ckpt"
    cli.trainer.save_checkpoint(checkpoint)
    return TrainResult(config.stem, checkpoint, dict(metrics), time.perf_counter() - start, batch_size)


def print_metrics(results: Mapping[str, Mapping[str, float]]) -> None:
    """Print one table row per run with its clean test metrics."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title="clean test metrics")
    table.add_column("model")
    table.add_column("metrics")
    for name, metrics in results.items():
        table.add_row(name, ", ".join(f"{k}={v:.3f}" for k, v in sorted(metrics.items())))
    Console().print(table)
