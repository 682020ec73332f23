"""A cell's result metrics must be numbers: a cell whose task metrics (clean or adversarial), success rate or
perturbation norms are NaN or infinite is stored as failed, with the names and values as the reason, never
as a result. Other statistics may say "undefined here" with NaN or inf and are stored as they are: a ROC AUC,
TPR or FPR over one class (a test batch of positives only has no false-positive rate), the update cosines of
a one-step attack, the PSNR of an unchanged image."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping

RESULT_METRICS = (
    "accuracy", "jaccard", "dice", "pixel_accuracy", "map", "map_50", "mean_iou", "success_rate", "linf", "l2",
)
RESULT = re.compile(rf"(^|/)({'|'.join(RESULT_METRICS)})$")  # adv/accuracy, clean/dice, a->b/success_rate


def non_finite(metrics: Mapping[str, float]) -> list[str]:
    """``name=value`` of each result metric (:data:`RESULT_METRICS`, under any prefix) that is NaN or infinite."""
    return [f"{name}={value}" for name, value in sorted(metrics.items())
            if RESULT.search(name) and not math.isfinite(value)]


def check_finite(metrics: Mapping[str, float]) -> None:
    """ValueError listing the non-finite result metrics, if any."""
    bad = non_finite(metrics)
    if bad:
        raise ValueError(f"non-finite metrics (diverged model or attack?): {', '.join(bad)}")
