"""Per-sample worst case over attacks (Croce & Hein 2020's robust accuracy of an ensemble): a sample counts
as robust at a budget only if every attack at that budget failed on it."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from attacks.base import Attack
from attacks.budgets import budget_value
from callbacks.bootstrap import bootstrap_interval, mean_parts
from callbacks.intervals import proportion

Scores = Mapping[str, float]  # sample id -> score (1/0 correct, or a per-image Jaccard)


def threat_group(settings: Mapping[str, Any], budget: str) -> str | None:
    """The worst-case group of an attack (its ``Attack.settings``) at a budget label: ``worst`` for Linf,
    ``worst_{norm}`` for another norm; None when the budget is not the attack's eps (minimal-norm attacks,
    exposure steps, pixel counts)."""
    value = budget_value(budget)
    eps = settings.get("eps")
    if value is None or not isinstance(eps, float) or abs(eps - value) > 1e-12:
        return None
    norm = settings.get("norm", "linf")
    return "worst" if norm == "linf" else f"worst_{norm}"


def worst_scores(per_attack: list[Scores]) -> dict[str, float]:
    """Each sample's minimum score over the attacks, over the samples every attack scored."""
    shared = set.intersection(*(set(scores) for scores in per_attack))
    return {sample: min(scores[sample] for scores in per_attack) for sample in sorted(shared)}


def worst_case_metrics(
    attacks: Mapping[str, Attack], scores: Mapping[str, Scores], metric: str, binary: bool
) -> dict[str, float]:
    """``adv/{group}/{budget}/{metric}`` for every group of two or more attacks at one budget and norm, with
    ``{metric}_ci_low/high`` (Wilson when the scores are 0/1, else bootstrap over images), and ``attacks``,
    how many were combined."""
    groups: dict[tuple[str, str], list[str]] = {}
    for key, attack in attacks.items():
        budget = key.rsplit("/", 1)[1]
        group = threat_group(attack.settings, budget)
        if group is not None and key in scores:
            groups.setdefault((group, budget), []).append(key)
    metrics = {}
    for (group, budget), keys in groups.items():
        if len(keys) < 2:
            continue
        worst = worst_scores([scores[key] for key in keys])
        if not worst:
            continue
        values = torch.tensor(list(worst.values()), dtype=torch.float64)
        prefix = f"adv/{group}/{budget}"
        if binary:
            found = proportion(metric, values.sum(), torch.tensor(float(len(values))))
            metrics |= {f"{prefix}/{name}": float(value) for name, value in found.items()}
        else:
            low, high = bootstrap_interval(*mean_parts(values))
            metrics |= {f"{prefix}/{metric}": float(values.mean()), f"{prefix}/{metric}_ci_low": low,
                        f"{prefix}/{metric}_ci_high": high}
        metrics[f"{prefix}/attacks"] = float(len(keys))
    return metrics
