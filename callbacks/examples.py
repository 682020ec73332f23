"""Example triplets for dashboards: clean image, amplified perturbation, adversarial image, with labels
and predictions drawn in (masks as overlays for segmentation, boxes for detection)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from torchvision.utils import draw_bounding_boxes, draw_segmentation_masks


def to_uint8(image: Tensor) -> Tensor:
    """(C, H, W) in [0, 1] with C = 1 or 3 -> (3, H, W) uint8."""
    image = image.detach().float().cpu().clamp(0, 1)
    if image.shape[0] == 1:
        image = image.expand(3, -1, -1)
    return (image * 255).round().to(torch.uint8)


def amplified(perturbation: Tensor) -> Tensor:
    """A perturbation scaled so its largest magnitude spans [0, 1] around mid-grey (0.5 = no change)."""
    scale = perturbation.abs().amax().clamp_min(1e-12)
    return 0.5 + 0.5 * perturbation / scale


SHOWN_SCORE = 0.5  # detections drawn and counted in examples: the confident ones


def confident(detections: dict[str, Tensor]) -> Tensor:
    """The boxes of a detection dict (targets have no scores) scored at least ``SHOWN_SCORE``."""
    scores = detections.get("scores")
    return detections["boxes"] if scores is None else detections["boxes"][scores >= SHOWN_SCORE]


def describe(prediction: Any) -> str:
    """A short text for a label or prediction of any task."""
    if isinstance(prediction, dict):
        return f"{len(confident(prediction))} boxes"
    if isinstance(prediction, Tensor) and prediction.dim() > 0:
        return f"{prediction.float().mean().item():.1%} foreground"
    return str(int(prediction))


def draw(image: Tensor, annotation: Any) -> Tensor:
    """The image as uint8 with a mask overlay (segmentation) or boxes (detection) drawn in."""
    pixels = to_uint8(image)
    if isinstance(annotation, dict) and len(boxes := confident(annotation)):
        return draw_bounding_boxes(pixels, boxes.detach().cpu(), colors="yellow", width=1)
    if isinstance(annotation, Tensor) and annotation.dim() == 2:
        return draw_segmentation_masks(pixels, annotation.detach().cpu().bool(), alpha=0.35, colors="green")
    return pixels


@dataclass
class Example:
    """One row of the examples table, images as (3, H, W) uint8."""

    sample_id: str
    attack: str
    clean: Tensor
    perturbation: Tensor
    adversarial: Tensor
    label: str
    clean_prediction: str
    adversarial_prediction: str


def examples_of(
    attack: str, ids: list[str], images: Tensor, adv: Tensor, target: Any, clean_pred: Any, adv_pred: Any, count: int
) -> list[Example]:
    """The first ``count`` samples of a batch as examples: predictions drawn on clean/adversarial images."""
    rows = []
    for i in range(min(count, len(images))):
        rows.append(
            Example(
                sample_id=str(ids[i]),
                attack=attack,
                clean=draw(images[i], clean_pred[i]),
                perturbation=to_uint8(amplified(adv[i] - images[i])),
                adversarial=draw(adv[i], adv_pred[i]),
                label=describe(target[i]),
                clean_prediction=describe(clean_pred[i]),
                adversarial_prediction=describe(adv_pred[i]),
            )
        )
    return rows


def heat_overlay(image: Tensor, heat: Tensor, alpha: float = 0.45) -> Tensor:
    """A (3, H, W) uint8 image with a (h, w) map blended over it in the jet colours, the map upsampled
    (bilinear) to the image, clipped at 0 and scaled by its maximum (blue: low, red: high)."""
    from matplotlib import colormaps

    heat = torch.nn.functional.interpolate(heat[None, None].float(), size=image.shape[-2:], mode="bilinear")[0, 0]
    heat = heat.clamp_min(0) / heat.max().clamp_min(1e-12)
    colours = torch.from_numpy(colormaps["jet"](heat.numpy())[..., :3]).permute(2, 0, 1).float()
    return ((1 - alpha) * image.float() + alpha * 255 * colours).round().clamp(0, 255).to(torch.uint8)
