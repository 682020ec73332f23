"""95% bootstrap intervals for the means over images the evaluation reports (Jaccard, Dice, perturbation
norms and variance, cosine consistency, SSIM/PSNR/BRISQUE): resample the images with replacement (Efron &
Tibshirani 1993, percentile interval), 1000 times from a fixed seed.

A mean may be a ratio of per-image sums, sum(a_i) / sum(b_i) (pooled Jaccard: a = TP, b = TP + FP + FN;
a plain mean: b = 1), and is resampled as such. Each image carries a key derived from its sample id, and the
values are ordered by key before resampling, so the interval does not depend on batch order or on how DDP
split the images: N processes give the interval of one.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

RESAMPLES = 1000
SEED = 0
LEVEL = 0.95

Parts = Mapping[str, tuple[Tensor, Tensor]]  # metric name -> per-image (numerator, denominator), each (B,)


def sample_keys(ids: Sequence[str], device: torch.device | str = "cpu") -> Tensor:
    """(B,) int64 key of each sample id (SHA-256, the same in every process)."""
    keys = [int.from_bytes(hashlib.sha256(str(i).encode()).digest()[:8], "big") >> 1 for i in ids]
    return torch.tensor(keys, dtype=torch.int64, device=device)


def bootstrap_interval(
    numerators: Tensor, denominators: Tensor, resamples: int = RESAMPLES, seed: int = SEED, level: float = LEVEL
) -> tuple[float, float]:
    """Percentile bootstrap interval of sum(numerators) / sum(denominators) over resampled images; images
    with a non-finite value are left out; NaN for no image."""
    defined = numerators.isfinite() & denominators.isfinite()
    numerators, denominators = numerators[defined].double().cpu(), denominators[defined].double().cpu()
    if len(numerators) == 0:
        return float("nan"), float("nan")
    generator = torch.Generator().manual_seed(seed)
    picks = torch.randint(len(numerators), (resamples, len(numerators)), generator=generator)
    ratios = numerators[picks].sum(dim=1) / denominators[picks].sum(dim=1)
    ratios = ratios[ratios.isfinite()]
    if len(ratios) == 0:
        return float("nan"), float("nan")
    tail = (1 - level) / 2
    low, high = torch.quantile(ratios, torch.tensor([tail, 1 - tail], dtype=torch.float64))
    return float(low), float(high)


def mean_parts(values: Tensor) -> tuple[Tensor, Tensor]:
    """The parts of a plain mean over images: the values over ones."""
    return values, torch.ones_like(values)


class BootstrapIntervals(Metric):
    """Per-image parts of the mean metrics of one prediction stream, gathered (``cat``) across processes;
    ``compute`` returns ``{name}_ci_low`` / ``{name}_ci_high`` for every metric fed to ``update``."""

    full_state_update = False

    def __init__(self, names: Sequence[str]) -> None:
        super().__init__()
        self.names = sorted(names)
        self.add_state("keys", default=[], dist_reduce_fx="cat")
        self.add_state("numerators", default=[], dist_reduce_fx="cat")
        self.add_state("denominators", default=[], dist_reduce_fx="cat")

    def update(self, keys: Tensor, parts: Parts) -> None:
        """Add the images ``keys`` (B,) with their ``parts``, which must name exactly this metric's names."""
        if sorted(parts) != self.names:
            raise ValueError(f"parts must name {self.names}, got {sorted(parts)}")
        if not self.names:
            return
        self.keys.append(keys)
        self.numerators.append(torch.stack([parts[n][0].double() for n in self.names], dim=1))
        self.denominators.append(torch.stack([parts[n][1].double() for n in self.names], dim=1))

    def compute(self) -> dict[str, Tensor]:
        if not self.names or len(self.keys) == 0:
            return {name: torch.tensor(float("nan")) for n in self.names for name in (f"{n}_ci_low", f"{n}_ci_high")}
        order = dim_zero_cat(self.keys).argsort()
        numerators, denominators = dim_zero_cat(self.numerators)[order], dim_zero_cat(self.denominators)[order]
        intervals = {}
        for column, name in enumerate(self.names):
            low, high = bootstrap_interval(numerators[:, column], denominators[:, column])
            intervals |= {f"{name}_ci_low": torch.tensor(low), f"{name}_ci_high": torch.tensor(high)}
        return intervals
