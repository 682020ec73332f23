"""A module's train/eval modes, parameter gradient flags and device, recorded so a callback that borrows a
user's model can hand it back as it found it."""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class ModuleState:
    """The training flag of every submodule, ``requires_grad`` of every parameter and the module's device
    (that of its first parameter or buffer; the module is moved back whole)."""

    modes: dict[str, bool]
    flags: dict[str, bool]
    device: torch.device | None

    @classmethod
    def of(cls, module: nn.Module) -> ModuleState:
        first = next(itertools.chain(module.parameters(), module.buffers()), None)
        return cls(
            {name: submodule.training for name, submodule in module.named_modules()},
            {name: parameter.requires_grad for name, parameter in module.named_parameters()},
            None if first is None else first.device,
        )

    def restore(self, module: nn.Module) -> None:
        """Put ``module`` back on the recorded device, in the recorded modes and with the recorded flags."""
        if self.device is not None:
            module.to(self.device)
        for name, submodule in module.named_modules():
            submodule.training = self.modes[name]
        for name, parameter in module.named_parameters():
            parameter.requires_grad_(self.flags[name])
