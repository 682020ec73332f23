"""From a loaded example to a tensor sample: channel count, resizing, training augmentation."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import albumentations as A
import cv2
import numpy as np
import torch

TASKS = ("classification", "segmentation", "detection")


@dataclass(frozen=True)
class Boxes:
    """Detection annotations in pixels: xyxy boxes (N, 4) float32 and labels (N,) int64 in 1..K."""

    boxes: np.ndarray
    labels: np.ndarray


@dataclass(frozen=True)
class Example:
    """One loaded item: image (H, W, C) uint8 or float32 in [0, 1], its target and its id.

    The target is a class index, a mask (H, W) of class indices, or ``Boxes``.
    """

    image: np.ndarray
    target: int | np.ndarray | Boxes
    id: str


def to_channels(image: np.ndarray, channels: int) -> np.ndarray:
    """(H, W, C) with C = ``channels``: grey is repeated to 3, colour becomes luminance (ITU-R 601)."""
    if image.ndim == 2:
        image = image[..., None]
    if image.shape[2] == channels:
        return image
    if channels == 3:
        return np.repeat(image, 3, axis=2)
    grey = cv2.cvtColor(np.ascontiguousarray(image[..., :3]), cv2.COLOR_RGB2GRAY)
    return grey[..., None]


def resize_example(example: Example, size: int) -> Example:
    """The example resized to ``size`` x ``size``: area filter when shrinking, nearest for masks."""
    height, width = example.image.shape[:2]
    if (height, width) == (size, size):
        return example
    interpolation = cv2.INTER_AREA if size < min(height, width) else cv2.INTER_LINEAR
    image = cv2.resize(example.image, (size, size), interpolation=interpolation)
    image = image.reshape(size, size, example.image.shape[2])
    target = example.target
    if isinstance(target, np.ndarray):
        target = cv2.resize(target, (size, size), interpolation=cv2.INTER_NEAREST)
    elif isinstance(target, Boxes):
        scale = np.array([size / width, size / height] * 2, dtype=np.float32)
        target = Boxes(target.boxes.astype(np.float32) * scale, target.labels)
    return replace(example, image=image, target=target)


def build_augmentation(
    task: str, flip_p: float, rotate_limit: float, shift_limit: float, seed: int
) -> A.Compose:
    """Ma et al. (2021) training augmentation: horizontal flip, small rotation and shift.

    Masks follow with nearest interpolation; boxes follow and are dropped below 30 % visibility.
    """
    transforms: list[A.BasicTransform] = [A.HorizontalFlip(p=flip_p)]
    if rotate_limit > 0 or shift_limit > 0:
        transforms.append(
            A.Affine(
                rotate=(-rotate_limit, rotate_limit),
                translate_percent=(-shift_limit, shift_limit),
                border_mode=cv2.BORDER_CONSTANT,
                fill=0,
                fill_mask=0,
                p=1.0,
            )
        )
    bbox_params = None
    if task == "detection":
        bbox_params = A.BboxParams(
            format="pascal_voc",
            label_fields=["labels"],
            min_visibility=0.3,
            min_width=1,
            min_height=1,
            clip=True,
        )
    return A.Compose(transforms, bbox_params=bbox_params, seed=seed)


def _augment(augmentation: A.Compose, example: Example) -> Example:
    target = example.target
    if isinstance(target, Boxes):
        out = augmentation(image=example.image, bboxes=target.boxes.reshape(-1, 4), labels=target.labels)
        boxes = np.asarray(out["bboxes"], dtype=np.float32).reshape(-1, 4)
        target = Boxes(boxes, np.asarray(out["labels"], dtype=np.int64))
    elif isinstance(target, np.ndarray):
        out = augmentation(image=example.image, mask=target)
        target = out["mask"]
    else:
        out = augmentation(image=example.image)
    return replace(example, image=out["image"], target=target)


def _image_tensor(image: np.ndarray) -> torch.Tensor:
    values = image.astype(np.float32) / 255.0 if image.dtype == np.uint8 else image.astype(np.float32)
    return torch.from_numpy(np.ascontiguousarray(values.clip(0.0, 1.0))).permute(2, 0, 1).contiguous()


def _target_tensor(target: int | np.ndarray | Boxes) -> Any:
    if isinstance(target, Boxes):
        return {
            "boxes": torch.as_tensor(target.boxes, dtype=torch.float32).reshape(-1, 4),
            "labels": torch.as_tensor(target.labels, dtype=torch.int64).reshape(-1),
        }
    return torch.as_tensor(np.asarray(target), dtype=torch.int64)


class Pipeline:
    """Channels, resize to ``size`` x ``size``, optional augmentation, then the sample dict of tensors."""

    def __init__(self, size: int, channels: int, augmentation: A.Compose | None = None) -> None:
        self.size = size
        self.channels = channels
        self.augmentation = augmentation

    def __call__(self, example: Example) -> dict[str, Any]:
        example = replace(example, image=to_channels(example.image, self.channels))
        example = resize_example(example, self.size)
        if self.augmentation is not None:
            example = _augment(self.augmentation, example)
        return {
            "image": _image_tensor(example.image),
            "target": _target_tensor(example.target),
            "id": example.id,
        }

    def reseed(self, seed: int) -> None:
        """Restart the augmentation's random stream (one stream per dataloader worker)."""
        if self.augmentation is not None:
            self.augmentation.set_random_seed(seed)
