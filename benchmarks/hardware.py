"""The hardware a run asks for (Lightning's accelerator, devices, nodes, strategy), checked before anything
runs: an impossible request (``--devices 0``, a GPU on a machine without one, more GPUs or CPU processes than
exist, an unknown strategy) is one line naming the arguments, not a traceback from the first cell."""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.accelerators import CPUAccelerator


def describe(settings: Mapping[str, Any]) -> str:
    """The request as the command line spells it: ``--accelerator cpu --devices 0 ...``."""
    return " ".join(f"--{name.replace('_', '-')} {settings[name]}"
                    for name in ("accelerator", "devices", "num_nodes", "strategy") if name in settings)


def world_size(settings: Mapping[str, Any]) -> int:
    """How many processes a trainer with ``settings`` runs (devices times nodes); ValueError naming the
    request when Lightning cannot honour it on this machine, or when it asks for more CPU processes than
    there are cores."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            trainer = pl.Trainer(**settings, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                                 enable_model_summary=False)
    except Exception as error:  # Lightning raises MisconfigurationException, ValueError, TypeError, ImportError
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ValueError(f"impossible hardware request ({describe(settings)}): {first_line}") from error
    cores = os.cpu_count() or 1
    if isinstance(trainer.accelerator, CPUAccelerator) and trainer.num_devices > cores:
        raise ValueError(f"impossible hardware request ({describe(settings)}): {trainer.num_devices} CPU "
                         f"processes per node, but this machine has {cores} cores")
    return trainer.world_size
