"""Mixed-precision attacks: an objective whose forward (and so its backward) runs under ``torch.autocast``
and whose outputs come back as fp32, so every attack keeps its perturbation, projection and step in fp32 and
its budget exact, with nothing changed in the attacks themselves.

bf16 has fp32's exponent range and needs no loss scaling. fp16 does (Micikevicius et al. 2018, Mixed
Precision Training, Sec. 3.2: scale the loss so small gradients survive the half-precision backward, unscale
the result, skip steps that overflow). Here the scale is chosen per sample from its own output gradient
(a power of two), so it needs no state across calls and keeps each sample independent of its batch.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor

from attacks.base import Objective
from attacks.norms import per_sample
from attacks.wrappers import ObjectiveWrapper

PRECISIONS: dict[str, torch.dtype | None] = {"32": None, "bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}
"""Lightning's precision names: full fp32, and autocast to bf16 or fp16 with fp32 outputs."""


def check_precision(precision: str) -> str:
    """``precision`` itself; ValueError naming it unless it is one of ``PRECISIONS``."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {sorted(PRECISIONS)}, got {precision!r}")
    return precision


SCALED_GRADIENT_EXPONENT = 4
"""fp16 scaling brings each sample's largest output gradient to 2**4 (see ``_ScaleOutputGradients``)."""


class _Scales:
    """The per-sample factors of one fp16 forward pass: set by the output side of its backward pass, read by
    the input side, which counts overflows on ``owner``."""

    def __init__(self, owner: MixedPrecisionObjective) -> None:
        self.owner = owner
        self.factors: Tensor | None = None


class _ScaleOutputGradients(torch.autograd.Function):
    """Identity on the output tensors; backward multiplies each sample's output gradients by the power of
    two that brings their largest entry to 2**SCALED_GRADIENT_EXPONENT (exact: only the exponent moves),
    so the fp16 backward neither underflows for confident samples nor overflows for the others."""

    @staticmethod
    def forward(ctx: Any, scales: _Scales, *tensors: Tensor) -> tuple[Tensor, ...]:
        ctx.scales = scales
        return tuple(tensor.view_as(tensor) for tensor in tensors)

    @staticmethod
    def backward(ctx: Any, *gradients: Tensor | None) -> tuple[Tensor | None, ...]:
        present = [g.abs().reshape(len(g), -1).amax(dim=1) for g in gradients if g is not None]
        largest = torch.stack(present).amax(dim=0)
        usable = (largest > 0) & largest.isfinite()
        factors = torch.where(usable, torch.exp2(SCALED_GRADIENT_EXPONENT - torch.ceil(torch.log2(largest))), 1.0)
        ctx.scales.factors = factors
        return None, *(None if g is None else g * per_sample(factors, g) for g in gradients)


class _UnscaleInputGradient(torch.autograd.Function):
    """Identity on the images; backward divides each sample's input gradient by its factor and zeroes the
    samples whose gradient is not finite (an fp16 overflow inside the network), counting them."""

    @staticmethod
    def forward(ctx: Any, images: Tensor, scales: _Scales) -> Tensor:
        ctx.scales = scales
        return images.view_as(images)

    @staticmethod
    def backward(ctx: Any, gradient: Tensor) -> tuple[Tensor, None]:
        factors = ctx.scales.factors
        if factors is None:  # no scaled output took part in the loss
            return gradient, None
        gradient = gradient / per_sample(factors, gradient)
        finite = gradient.flatten(1).isfinite().all(dim=1)
        ctx.scales.owner.overflows += int((~finite).sum())
        return torch.where(per_sample(finite, gradient), gradient, 0.0), None


def map_floating(value: Any, function: Callable[[Tensor], Tensor]) -> Any:
    """``value`` with ``function`` applied to every floating-point tensor in it: a tensor, or one held in
    mappings, lists, tuples (named ones too) and dataclasses (such as detection outputs), at any depth."""
    if isinstance(value, Tensor):
        return function(value) if value.is_floating_point() else value
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        fields = [field.name for field in dataclasses.fields(value) if field.init]
        return dataclasses.replace(value, **{name: map_floating(getattr(value, name), function) for name in fields})
    if isinstance(value, Mapping):
        return type(value)((key, map_floating(item, function)) for key, item in value.items())
    if isinstance(value, tuple) and hasattr(value, "_fields"):
        return type(value)(*(map_floating(item, function) for item in value))
    if isinstance(value, (list, tuple)):
        return type(value)(map_floating(item, function) for item in value)
    return value


def with_scaled_gradients(outputs: Any, scales: _Scales, batch: int) -> Any:
    """``outputs`` with the floating tensors that require grad passed through one ``_ScaleOutputGradients``
    (one call, so a sample's factor covers all its outputs); they must have the batch dimension first."""
    tracked: list[Tensor] = []

    def track(tensor: Tensor) -> Tensor:
        if tensor.requires_grad:
            if tensor.dim() == 0 or tensor.shape[0] != batch:
                raise ValueError(f"16-mixed needs outputs with the batch ({batch}) first, got {tuple(tensor.shape)}")
            tracked.append(tensor)
        return tensor

    map_floating(outputs, track)
    if not tracked:
        return outputs
    scaled = dict(zip(map(id, tracked), _ScaleOutputGradients.apply(scales, *tracked), strict=True))
    return map_floating(outputs, lambda tensor: scaled.get(id(tensor), tensor))


class MixedPrecisionObjective(ObjectiveWrapper):
    """The wrapped objective's forward under ``torch.autocast`` to bf16 (default) or fp16, its floating
    outputs cast to fp32, so attacks get fp32 logits, losses and input gradients.

    bf16 keeps fp32's exponent range and needs no scaling. With fp16 and an input that requires grad, each
    sample's gradient is scaled where it enters the half-precision graph and unscaled at the input: per
    sample and without state, so attacks stay deterministic and batch-independent. A sample whose input
    gradient still overflows gets a zero gradient for that step (the step is skipped, as GradScaler skips
    an optimiser step), counted in ``overflows``. Attacks take gradients w.r.t. the input only (the
    library's rule): parameter gradients would stay scaled.
    """

    def __init__(self, objective: Objective, precision: str = "bf16-mixed") -> None:
        super().__init__(objective)
        dtype = PRECISIONS[check_precision(precision)]
        if dtype is None:
            raise ValueError(f"precision must be a mixed precision ('bf16-mixed' or '16-mixed'), got {precision!r}")
        self.precision = precision
        self.dtype = dtype
        self.overflows = 0

    def forward(self, images: Tensor) -> Any:
        scaling = self.dtype is torch.float16 and images.requires_grad and torch.is_grad_enabled()
        scales = _Scales(self)
        if scaling:
            images = _UnscaleInputGradient.apply(images, scales)
        with torch.autocast(images.device.type, dtype=self.dtype):
            outputs = self.objective.forward(images)
        outputs = map_floating(outputs, Tensor.float)
        return with_scaled_gradients(outputs, scales, len(images)) if scaling else outputs


def with_precision(objective: Objective, precision: str) -> Objective:
    """``objective`` itself at precision "32", else wrapped in a ``MixedPrecisionObjective``."""
    if PRECISIONS[check_precision(precision)] is None:
        return objective
    return MixedPrecisionObjective(objective, precision)
