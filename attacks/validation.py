"""Checks at the attack boundary (docs/attacks.md, "Input rules"): images in the project's domain and class
labels in a model's range. Each makes one cheap pass over its tensor and raises one ValueError naming the
argument and the offending value."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

IMAGE_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
IMAGE_TOLERANCE = 1e-5  # how far float rounding may take a pixel outside [0, 1]
INTEGER_DTYPES = (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)


def describe(value: Any) -> str:
    """A value as error messages name it: a tensor by dtype and shape, a list or tuple by length, a mapping by
    its keys, anything else by its type."""
    if isinstance(value, Tensor):
        return f"a {value.dtype} tensor of shape {tuple(value.shape)}"
    if isinstance(value, (list, tuple)):
        return f"a {type(value).__name__} of {len(value)}"
    if isinstance(value, Mapping):
        return f"a {type(value).__name__} with keys {sorted(map(str, value))}"
    return f"a {type(value).__name__}"


def first_index(mask: Tensor) -> tuple[int, ...]:
    """The index of the first True element of ``mask`` in row-major order."""
    return tuple(int(i) for i in mask.nonzero()[0])


def index_text(name: str, index: Sequence[int]) -> str:
    """``name[i, j]``: an element of the argument ``name``, as Python indexes it."""
    return f"{name}[{', '.join(map(str, index))}]"


def check_images(images: Any, model: nn.Module | None = None) -> None:
    """Raise ValueError unless ``images`` is a non-empty floating-point (B, C, H, W) tensor of finite values in
    [0, 1] (``IMAGE_TOLERANCE`` for rounding) with the dtype of ``model``'s floating-point parameters (any
    floating dtype under autocast). One pass (``aminmax``, which NaN propagates through) and one sync."""
    if not isinstance(images, Tensor):
        raise ValueError(f"images must be a torch.Tensor (B, C, H, W), got {describe(images)}")
    if images.dtype not in IMAGE_DTYPES:
        raise ValueError(
            f"images must be a floating-point tensor in [0, 1] (float32 by convention), got {images.dtype}: "
            "convert 8-bit images with images.float() / 255"
        )
    if images.dim() != 4 or images.numel() == 0:
        raise ValueError(f"images must be a non-empty (B, C, H, W) tensor, got shape {tuple(images.shape)}")
    low, high = torch.stack(torch.aminmax(images)).tolist()
    if not (math.isfinite(low) and math.isfinite(high)):
        index = first_index(~torch.isfinite(images))
        raise ValueError(f"images must be finite: {index_text('images', index)} is {images[index].item()}")
    if low < -IMAGE_TOLERANCE or high > 1 + IMAGE_TOLERANCE:
        raise ValueError(
            f"images must lie in [0, 1] (got min {low:.3f}, max {high:.3f}): scale them to [0, 1] before "
            "attacking; normalisation belongs inside the model"
        )
    if model is not None:
        check_model_dtype(images, model)


def check_model_dtype(images: Tensor, model: nn.Module) -> None:
    """Raise ValueError unless ``images`` have the dtype of ``model``'s first floating-point parameter (no
    parameter, or autocast on the images' device: nothing to check)."""
    parameter = next((p for p in model.parameters() if p.is_floating_point()), None)
    if parameter is None or parameter.dtype == images.dtype or torch.is_autocast_enabled(images.device.type):
        return
    raise ValueError(
        f"images are {images.dtype} but the model's parameters {parameter.dtype}: "
        f"cast the images (images.to({parameter.dtype})) or the model"
    )


def check_class_indices(
    name: str,
    labels: Any,
    shape: Sequence[int],
    low: int,
    high: int | None,
    dtypes: Sequence[torch.dtype] = INTEGER_DTYPES,
) -> None:
    """Raise ValueError naming ``name`` and the first offending element unless ``labels`` is a tensor of one of
    ``dtypes`` with ``shape`` (sample first) and every value in [low, high) (no upper bound when ``high`` is
    None). One ``aminmax`` pass and one sync."""
    if not isinstance(labels, Tensor) or labels.dtype not in dtypes:
        kinds = ", ".join(str(dtype).removeprefix("torch.") for dtype in dtypes)
        raise ValueError(f"{name} must be a tensor of class indices ({kinds}), got {describe(labels)}")
    if tuple(labels.shape) != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)}, got {tuple(labels.shape)}")
    if labels.numel() == 0:
        return
    smallest, largest = torch.stack(torch.aminmax(labels)).tolist()
    if smallest >= low and (high is None or largest < high):
        return
    outside = labels < low if high is None else (labels < low) | (labels >= high)
    index = first_index(outside)
    bound = f">= {low}" if high is None else f"in [{low}, {high})"
    raise ValueError(f"{index_text(name, index)} = {labels[index].item()}: class indices must be {bound}")
