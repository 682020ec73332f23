"""Fit one task model from a LightningCLI YAML config (model + data + trainer) and save a checkpoint."""

from __future__ import annotations

import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jsonargparse import Namespace
from lightning.pytorch import LightningDataModule, LightningModule
from lightning.pytorch.cli import LightningCLI


@dataclass
class TrainResult:
    """What one training run produced: its name, checkpoint, clean test metrics and wall time."""

    name: str
    checkpoint: Path
    metrics: dict[str, float]
    seconds: float


class ParsedConfig(LightningCLI):
    """A LightningCLI that parses and type-checks its config (defaults filled in) and builds nothing."""

    def instantiate_classes(self) -> None:
        return None


def build_cli(config: Path, output: Path, overrides: Sequence[str] = ()) -> LightningCLI:
    """Parse a config (``model``/``data`` as class_path + init_args, ``trainer``) and build its model,
    datamodule and trainer, without running anything."""
    return make_cli(LightningCLI, config, output, overrides)


def parse_train_config(config: Path, overrides: Sequence[str] = ()) -> Namespace:
    """The config with ``overrides`` as :func:`build_cli` reads it (types checked, defaults filled in),
    without building anything; a bad key or value raises jsonargparse's ``ArgumentError``."""
    return make_cli(ParsedConfig, config, Path("."), overrides, parser_kwargs={"exit_on_error": False}).config


def make_cli(
    cli_class: type[LightningCLI], config: Path, output: Path, overrides: Sequence[str], **options: Any
) -> LightningCLI:
    """``cli_class`` on a train config with overrides: the model and data classes, trainer defaults and
    logging that every training and every check of a config share."""
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
                "logger": {
                    "class_path": "lightning.pytorch.loggers.CSVLogger",
                    "init_args": {"save_dir": str(output), "name": config.stem},
                },
            },
            **options,
        )


def train_from_config(config: Path, output: Path, overrides: Sequence[str] = ()) -> TrainResult:
    """Fit, test on the held-out split, and save ``{output}/{config stem}.ckpt``."""
    start = time.perf_counter()
    cli = build_cli(config, output, overrides)
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    (metrics,) = cli.trainer.test(cli.model, datamodule=cli.datamodule, verbose=False)
    checkpoint = output / f"{config.stem}.ckpt"
    cli.trainer.save_checkpoint(checkpoint)
    return TrainResult(config.stem, checkpoint, dict(metrics), time.perf_counter() - start)


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
