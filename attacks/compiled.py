"""torch.compile for the forward pass that attacks run: an objective wrapper that falls back to eager, with
one warning, when compilation fails (a missing compiler, an unsupported model)."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from attacks.base import Objective
from attacks.wrappers import ObjectiveWrapper


class CompiledObjective(ObjectiveWrapper):
    """The wrapped objective's forward through ``torch.compile(backend=backend, mode=mode)``.

    Compilation happens at the first call (and again for new shapes, grad modes or model flags, as
    torch.compile's guards decide). If it raises, the forward runs eagerly: an error of the model itself
    then surfaces from the eager run; otherwise one RuntimeWarning names the compile error, ``failure`` keeps
    it, and every later call runs eagerly. Build the wrapper once per evaluation, not per batch, so the
    compiled code is reused.
    """

    def __init__(self, objective: Objective, backend: str | Callable[..., Any] = "inductor", mode: str | None = None):
        super().__init__(objective)
        self.compiled_forward = torch.compile(objective.forward, backend=backend, mode=mode)
        self.failure: str | None = None

    def forward(self, images: Tensor) -> Any:
        if self.failure is not None:
            return self.objective.forward(images)
        try:
            return self.compiled_forward(images)
        except Exception as error:  # any compile failure: the eager run below decides whether the model fails
            outputs = self.objective.forward(images)
            lines = [line.strip() for line in str(error).splitlines() if line.strip()]
            self.failure = " ".join([f"{type(error).__name__}:", *lines[:2]])  # dynamo puts the cause second
            warnings.warn(
                f"torch.compile failed, the objective runs eagerly: {self.failure}", RuntimeWarning, stacklevel=2
            )
            return outputs
