"""Task LightningModules (classifier, U-Net segmenter, Faster R-CNN detector) and their attack objectives.

Names are imported on first use, so ``import lightning_modules.objectives`` stays free of timm, smp and
torchvision detection.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "ClassifierModule": "lightning_modules.classifier",
    "SegmenterModule": "lightning_modules.segmenter",
    "DetectorModule": "lightning_modules.detector",
    "ClassificationObjective": "lightning_modules.objectives",
    "SegmentationObjective": "lightning_modules.objectives",
    "DetectionObjective": "lightning_modules.detection_objective",
    "DetectionOutputs": "lightning_modules.detection_objective",
    "RetinaNetObjective": "lightning_modules.retinanet_objective",
    "RetinaNetOutputs": "lightning_modules.retinanet_objective",
    "MatchedBoxIoU": "lightning_modules.metrics",
    "DEFENCES": "lightning_modules.defences",
    "InputDefence": "lightning_modules.defences",
    "build_transform": "lightning_modules.defences",
    "with_defence": "lightning_modules.defences",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'lightning_modules' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
