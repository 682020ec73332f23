"""Evaluation callbacks for ``trainer.test``: attacks, transfer matrices and adversarial-example detectors.

``from callbacks import AdversarialEvaluation`` works; names are imported on first use, so a module of this
package (e.g. ``callbacks.detector_features``) can be imported without the others.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "AdversarialAnalysis": "callbacks.analysis",
    "AdversarialEvaluation": "callbacks.attack_eval",
    "AttackSpec": "callbacks.attack_eval",
    "AttackBatchSizes": "callbacks.batch_size",
    "TransferEvaluation": "callbacks.transfer",
    "AdversarialDetectionEvaluation": "callbacks.adversarial_detection",
    "DETECTORS": "callbacks.detector_features",
    "DetectionReport": "callbacks.detector_features",
    "AttackSuccess": "callbacks.metrics",
    "PerturbationStatistics": "callbacks.metrics",
    "AdversarialImageQuality": "callbacks.quality",
    "BRISQUEScore": "callbacks.quality",
    "make_wandb_logger": "callbacks.wandb_logging",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'callbacks' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
