"""A module's train/eval modes, parameter gradient flags, device and memory formats, recorded so a callback
that borrows a user's model can hand it back as it found it."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import torch
from torch import nn


def memory_format(tensor: torch.Tensor) -> torch.memory_format | None:
    """The layout of a 4-D tensor dense in one: ``contiguous_format`` (also when it is both, as 1 x 1 kernels
    are) or ``channels_last``; None for other tensors."""
    if tensor.dim() != 4:
        return None
    if tensor.is_contiguous():
        return torch.contiguous_format
    return torch.channels_last if tensor.is_contiguous(memory_format=torch.channels_last) else None


@dataclass(frozen=True)
class ModuleState:
    """The training flag of every submodule, ``requires_grad`` of every parameter, the module's device
    (that of its first parameter or buffer; the module is moved back whole) and the memory format of every
    4-D parameter and buffer (``memory_format``)."""

    modes: dict[str, bool]
    flags: dict[str, bool]
    device: torch.device | None
    formats: dict[str, torch.memory_format] = field(default_factory=dict)

    @classmethod
    def of(cls, module: nn.Module) -> ModuleState:
        first = next(itertools.chain(module.parameters(), module.buffers()), None)
        tensors = itertools.chain(module.named_parameters(), module.named_buffers())
        return cls(
            {name: submodule.training for name, submodule in module.named_modules()},
            {name: parameter.requires_grad for name, parameter in module.named_parameters()},
            None if first is None else first.device,
            {name: layout for name, tensor in tensors if (layout := memory_format(tensor)) is not None},
        )

    def restore(self, module: nn.Module) -> None:
        """Put ``module`` back on the recorded device, in the recorded modes, with the recorded flags and
        memory formats."""
        if self.device is not None:
            module.to(self.device)
        for name, submodule in module.named_modules():
            submodule.training = self.modes[name]
        for name, parameter in module.named_parameters():
            parameter.requires_grad_(self.flags[name])
        for name, tensor in itertools.chain(module.named_parameters(), module.named_buffers()):
            layout = self.formats.get(name)
            if layout is not None and not tensor.is_contiguous(memory_format=layout):
                tensor.data = tensor.data.contiguous(memory_format=layout)
