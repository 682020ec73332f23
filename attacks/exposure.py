"""Adversarial exposure attacks: the multiplicative exposure attack, bracketed exposure fusion (BEF) and
its convolutional form (CBEF).

Cheng et al., "Adversarial Exposure Attack on Diabetic Retinopathy Imagery", 2021, Sec. 3.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from attacks.base import (
    Attack,
    AttackResult,
    AttackTrace,
    Objective,
    SampleRandom,
    TraceRecorder,
    check_budget,
    check_positive,
    check_steps,
)
from attacks.norms import norm_by_name
from attacks.pyramid import laplacian_pyramid, reconstruct


def exposed(images: Tensor, offset: Tensor) -> Tensor:
    """X^e = X * E with E = 1 + offset (Eq. 1), clamped to [0, 1]."""
    return (images * (1.0 + offset)).clamp(0.0, 1.0)


class MultiplicativeExposure(Attack):
    """Multiplicative exposure attack (Cheng et al. 2021, Eq. 1-2): X^e = X * E, maximise the loss
    subject to ||E - 1||_p <= eps, by sign (Linf) or unit-L2 steps on E with projection onto that ball.

    The paper gives no eps; 0.1 (a +-10 % exposure change per pixel) is our default. Clamping X^e to
    [0, 1] only shrinks |X^e / X - 1|, so the budget holds on X^e / X wherever X > 0.
    """

    name = "multiplicative_exposure"

    def __init__(
        self, eps: float = 0.1, alpha: float | None = None, steps: int = 10, norm: str = "linf", seed: int = 0
    ) -> None:
        super().__init__(seed)
        check_budget("eps", eps, norm)
        check_steps("steps", steps)
        alpha = eps / steps if alpha is None else alpha
        check_positive("alpha", alpha)
        self.eps = float(eps)
        self.alpha = float(alpha)
        self.steps = int(steps)
        self.norm = norm_by_name(norm)

    def run(
        self, objective: Objective, images: Tensor, target: Any, random: SampleRandom
    ) -> AttackResult:
        offset = torch.zeros_like(images)
        recorder = TraceRecorder(images)
        for _ in range(self.steps):
            offset.requires_grad_(True)
            loss = objective.loss(objective.forward(exposed(images, offset)), target)
            (gradient,) = torch.autograd.grad(loss.sum(), offset)
            step = self.alpha * self.norm.normalise_step(gradient)
            offset = self.norm.project(offset.detach() + step, self.eps)
            recorder.step(exposed(images, offset) - images)
        adv = exposed(images, offset)
        return AttackResult(adv, recorder.finish(adv - images))


def bracket_exposures(brackets: int, exposure_range: float) -> Tensor:
    """Exposure shifts e_i evenly spaced in [-lambda, lambda] (Eq. 3); the middle one is exactly 0 (odd N)."""
    offsets = torch.arange(brackets, dtype=torch.float64) - (brackets - 1) / 2
    return (exposure_range * offsets / ((brackets - 1) / 2)).float()


def neutral_weights(exposures: Tensor) -> Tensor:
    """Bracket weights (N,) whose fusion gives X back wherever no bracket saturates.

    All weight on e_i = 0 when there is one (odd N); otherwise the convex pair around 0 with
    a * 2^{e_lo} + (1 - a) * 2^{e_hi} = 1.
    """
    weights = torch.zeros_like(exposures)
    upper = int(torch.searchsorted(exposures, torch.tensor(0.0)))
    if exposures[upper] == 0:
        weights[upper] = 1.0
        return weights
    low_gain, high_gain = 2.0 ** exposures[upper - 1], 2.0 ** exposures[upper]
    weights[upper - 1] = (high_gain - 1.0) / (high_gain - low_gain)
    weights[upper] = 1.0 - weights[upper - 1]
    return weights


def bracketed(images: Tensor, exposures: Tensor) -> Tensor:
    """Bracketed exposures X_i = X * 2^{e_i} (Eq. 3), (B, C, H, W) -> (B, N, C, H, W).

    Clamped to [0, 1] as a camera sensor saturates, so every bracket is itself a valid image.
    """
    gains = (2.0 ** exposures).to(images).view(1, -1, 1, 1, 1)
    return (images.unsqueeze(1) * gains).clamp(0.0, 1.0)


def normalised(weights: Tensor) -> Tensor:
    """Weights (B, N, K*K, C, H, W) divided by their sum over brackets and taps (the Eq. 4 / 8 constraint)."""
    return weights / weights.sum(dim=(1, 2), keepdim=True).clamp_min(torch.finfo(weights.dtype).tiny)


def ascend(weights: Tensor, gradient: Tensor, alpha: float) -> Tensor:
    """Sign-gradient step (Eq. 9), then back onto the simplex: non-negative and summing to 1 per pixel."""
    return normalised((weights + alpha * gradient.sign()).clamp_min(0.0))


class BracketedExposureFusion(Attack):
    """BEF (Cheng et al. 2021, Eq. 3-6 and 9): ascend the loss over per-level, per-pixel, per-channel
    weight maps that fuse N bracketed exposures in Laplacian-pyramid space.

    Weights are non-negative and normalised explicitly (not by a softmax) so that the initial
    weights can be exactly one-hot on the e = 0 bracket, which reproduces the input; ``alpha`` is
    then a step in weight units as in Eq. 9.
    """

    name = "bef"
    kernel_size = 1

    def __init__(
        self,
        levels: int = 3,
        brackets: int = 5,
        exposure_range: float = 1.0,
        alpha: float = 0.01,
        steps: int = 10,
        seed: int = 0,
    ) -> None:
        super().__init__(seed)
        check_steps("levels", levels)
        check_steps("steps", steps)
        check_steps("brackets", brackets, minimum=2)
        check_positive("exposure_range", exposure_range, allow_zero=False)
        check_positive("alpha", alpha)
        self.levels = int(levels)
        self.brackets = int(brackets)
        self.exposure_range = float(exposure_range)
        self.alpha = float(alpha)
        self.steps = int(steps)

    def taps(self, bands: Tensor) -> Tensor:
        """Each band value as its K x K neighbourhood: (B, N, C, H, W) -> (B, N, K*K, C, H, W)."""
        return bands.unsqueeze(2)

    def fuse(self, pyramids: list[Tensor], weights: list[Tensor]) -> Tensor:
        """Eq. 5 (Eq. 7): weight and sum the brackets (and taps) at each level, then invert the pyramid."""
        levels = zip(weights, pyramids, strict=True)
        return reconstruct([(w * self.taps(band)).sum(dim=(1, 2)) for w, band in levels])

    def initial_weights(self, pyramids: list[Tensor], exposures: Tensor) -> list[Tensor]:
        """Identity fusion: the centre tap of each bracket carries its neutral weight at every pixel."""
        weights = []
        for band in pyramids:
            batch, brackets, channels, height, width = band.shape
            level = band.new_zeros(batch, brackets, self.kernel_size**2, channels, height, width)
            level[:, :, self.kernel_size**2 // 2] = neutral_weights(exposures).to(band).view(1, -1, 1, 1, 1)
            weights.append(level)
        return weights

    def optimise(
        self, objective: Objective, images: Tensor, target: Any
    ) -> tuple[Tensor, list[Tensor], AttackTrace]:
        """Fused images and normalised weights after ``steps`` updates, with the trace of the iterates."""
        exposures = bracket_exposures(self.brackets, self.exposure_range)
        pyramids = laplacian_pyramid(bracketed(images, exposures), self.levels)
        weights = self.initial_weights(pyramids, exposures)
        recorder = TraceRecorder(images)
        for _ in range(self.steps):
            weights = [w.detach().requires_grad_(True) for w in weights]
            fused = self.fuse(pyramids, [normalised(w) for w in weights])
            loss = objective.loss(objective.forward(fused), target)
            gradients = torch.autograd.grad(loss.sum(), weights)
            weights = [ascend(w.detach(), g, self.alpha) for w, g in zip(weights, gradients, strict=True)]
            with torch.no_grad():
                fused = self.fuse(pyramids, weights)
            recorder.step(fused - images)
        return fused, weights, recorder.finish(fused - images)

    def run(
        self, objective: Objective, images: Tensor, target: Any, random: SampleRandom
    ) -> AttackResult:
        fused, _, trace = self.optimise(objective, images, target)
        return AttackResult(fused, trace)


class ConvolutionalBracketedExposureFusion(BracketedExposureFusion):
    """CBEF (Cheng et al. 2021, Eq. 7-9): BEF with a per-pixel K x K kernel per bracket and level,
    normalised over brackets and taps; identity (centre-tap) initialisation, K = 1 is exactly BEF.
    """

    name = "cbef"

    def __init__(self, kernel_size: int = 3, **options: Any) -> None:
        super().__init__(**options)
        check_steps("kernel_size", kernel_size)
        if kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be an odd integer >= 1, got {kernel_size!r}")
        self.kernel_size = int(kernel_size)

    def taps(self, bands: Tensor) -> Tensor:
        batch, brackets, channels, height, width = bands.shape
        pad = self.kernel_size // 2
        planes = F.pad(bands.reshape(-1, 1, height, width), (pad, pad, pad, pad), mode="replicate")
        columns = F.unfold(planes, self.kernel_size)
        return columns.view(batch, brackets, channels, self.kernel_size**2, height, width).transpose(2, 3)
