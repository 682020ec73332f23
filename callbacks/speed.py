"""How an evaluation runs the model, for speed: mixed precision and torch.compile of the objective's forward
(used by the attacks and by the clean and adversarial predictions alike) and the channels_last memory
format of the model and its inputs (docs/performance.md)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from attacks.base import Objective
from attacks.compiled import CompiledObjective
from attacks.precision import with_precision


def check_flag(name: str, value: bool | None, allow_none: bool = False) -> None:
    """ValueError naming the argument unless ``value`` is a bool (or None when allowed)."""
    if not (isinstance(value, bool) or (allow_none and value is None)):
        allowed = "True, False or None" if allow_none else "True or False"
        raise ValueError(f"{name} must be {allowed}, got {value!r}")


def channels_last_wanted(option: bool | None, module: nn.Module, device: torch.device) -> bool:
    """``option`` when set; None: on for a network with 2-D convolutions on CUDA, off elsewhere (on CPU
    channels_last is seldom faster)."""
    if option is not None:
        return option
    return device.type == "cuda" and any(isinstance(submodule, nn.Conv2d) for submodule in module.modules())


def channels_last_images(images: Tensor) -> Tensor:
    """(B, C, H, W) images in the channels_last memory format (same values)."""
    return images.contiguous(memory_format=torch.channels_last)


def evaluation_objective(objective: Objective, precision: str, compile: bool) -> Objective:
    """``objective`` with its forward compiled (when ``compile``) and run under ``precision``: autocast, the
    fp32 casts and fp16 loss scaling wrap the compiled forward."""
    return with_precision(CompiledObjective(objective) if compile else objective, precision)
