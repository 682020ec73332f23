"""95% intervals for the proportions the evaluation reports (accuracy, FPR, attack success rates)."""

from __future__ import annotations

import torch
from torch import Tensor

Z_95 = 1.959963984540054  # the standard normal's 97.5% quantile


def wilson_interval(successes: Tensor, trials: Tensor, z: float = Z_95) -> tuple[Tensor, Tensor]:
    """Wilson score interval of a binomial proportion p = k / n (Wilson 1927):
    (p + z^2 / 2n -+ z sqrt(p (1 - p) / n + z^2 / 4n^2)) / (1 + z^2 / n); NaN for n = 0."""
    k, n = successes.double(), trials.double()
    if n <= 0:
        nan = torch.tensor(float("nan"))
        return nan, nan
    p = k / n
    centre = p + z**2 / (2 * n)
    spread = z * torch.sqrt(p * (1 - p) / n + z**2 / (4 * n**2))
    scale = 1 + z**2 / n
    return ((centre - spread) / scale).clamp(0, 1).float(), ((centre + spread) / scale).clamp(0, 1).float()


def proportion(name: str, successes: Tensor, trials: Tensor) -> dict[str, Tensor]:
    """``{name: k / n, name_ci_low, name_ci_high}``: the proportion and its 95% Wilson interval."""
    low, high = wilson_interval(successes, trials)
    value = (successes / trials).float() if trials > 0 else torch.tensor(float("nan"))
    return {name: value, f"{name}_ci_low": low, f"{name}_ci_high": high}
