"""FMN: Fast Minimum-Norm attacks in L1, L2 and Linf, and the robust-accuracy curve their minimal norms give."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from attacks.base import (
    Attack,
    AttackResult,
    Objective,
    SampleRandom,
    TraceRecorder,
    check_number,
    check_positive,
    check_steps,
)
from attacks.blackbox import require_class_logits, succeeded
from attacks.cw import signed_margin
from attacks.norms import TINY, per_sample
from attacks.targets import TargetMode


def project_l1_ball(delta: Tensor, radius: Tensor) -> Tensor:
    """Euclidean projection of each sample onto the L1 ball of its radius (Duchi et al. 2008, Fig. 1): shrink
    |delta| by theta = (sum_{j <= rho} u_j - r) / rho, u sorted descending, rho = max{j: u_j > (sum_{i <= j}
    u_i - r) / j}; samples already inside stay as they are."""
    flat = delta.flatten(1)
    magnitude = flat.abs()
    sorted_magnitude = magnitude.sort(dim=1, descending=True).values
    cumulative = sorted_magnitude.cumsum(dim=1) - radius.unsqueeze(1)
    ranks = torch.arange(1, flat.shape[1] + 1, device=delta.device, dtype=delta.dtype)
    rho = (sorted_magnitude * ranks > cumulative).sum(dim=1, keepdim=True).clamp_min(1)
    theta = cumulative.gather(1, rho - 1) / rho
    shrunk = (magnitude - theta).clamp_min(0) * flat.sign()
    inside = magnitude.sum(dim=1, keepdim=True) <= radius.unsqueeze(1)
    return torch.where(inside, flat, shrunk).view_as(delta)


def project_l2_ball(delta: Tensor, radius: Tensor) -> Tensor:
    """Radial projection of each sample onto the L2 ball of its radius."""
    factor = (radius / delta.flatten(1).norm(dim=1).clamp_min(TINY)).clamp(max=1.0)
    return delta * per_sample(factor, delta)


def project_linf_ball(delta: Tensor, radius: Tensor) -> Tensor:
    """Elementwise clipping of each sample to [-radius, radius]."""
    bound = per_sample(radius, delta)
    return delta.clamp(-bound, bound)


BALLS: dict[str, tuple[float, float, Callable[[Tensor, Tensor], Tensor]]] = {
    "l1": (1.0, math.inf, project_l1_ball),
    "l2": (2.0, 2.0, project_l2_ball),
    "linf": (math.inf, 1.0, project_linf_ball),
}
"""norm name -> (p, dual exponent q with 1/p + 1/q = 1, projection onto the per-sample Lp ball)."""


def cosine_annealing(initial: float, final: float, step: int, steps: int) -> float:
    """h(initial, final, k, K) = final + (initial - final) (1 + cos(k pi / K)) / 2 (Pintor et al., Alg. 1)."""
    return final + (initial - final) * (1 + math.cos(math.pi * step / steps)) / 2


def robust_accuracy_curve(norms: Tensor, budgets: Sequence[float] | Tensor) -> Tensor:
    """Robust accuracy at each budget from one minimal-norm run: the fraction of samples whose minimal
    adversarial norm exceeds the budget (norm 0, misclassified clean, is never robust; inf always is)."""
    budgets = torch.as_tensor(budgets, dtype=norms.dtype, device=norms.device)
    return (norms.unsqueeze(0) > budgets.reshape(-1, 1)).to(norms.dtype).mean(dim=1)


class FMN(Attack):
    """Fast Minimum-Norm attack (Pintor, Roli, Brendel, Biggio, NeurIPS 2021, Algorithm 1) in L1, L2 or Linf.

    Per sample, gradient steps of alpha_k g / ||g||_2 on the logit margin L (line 14) are projected onto an
    Lp ball whose radius eps_k shrinks by (1 - gamma_k) while the iterate is adversarial and grows by
    (1 + gamma_k) while not, starting from the linear estimate ||delta||_p + L / ||grad L||_q (lines 5-11);
    gamma and alpha are cosine-annealed (lines 4, 13; alpha_final None: alpha_init / 100, as the authors'
    code). The smallest adversarial iterate found is kept (line 9) and its norm returned in
    ``extras["norms"]`` (inf when never fooled: returned unchanged; 0 when the clean image is already
    fooled: returned unchanged, never repaired). Classification objectives only (logits (B, K)).
    """

    name = "fmn"

    def __init__(
        self,
        norm: str = "l2",
        steps: int = 100,
        alpha_init: float = 1.0,
        alpha_final: float | None = None,
        gamma_init: float = 0.05,
        gamma_final: float = 0.001,
        target_mode: str = "untargeted",
        seed: int = 0,
    ) -> None:
        super().__init__(seed=seed)
        if not isinstance(norm, str) or norm not in BALLS:
            raise ValueError(f"norm must be one of {sorted(BALLS)}, got {norm!r}")
        check_steps("steps", steps)
        check_positive("alpha_init", alpha_init, allow_zero=False)
        alpha_final = alpha_init / 100 if alpha_final is None else alpha_final
        check_positive("alpha_final", alpha_final)
        for name, gamma in (("gamma_init", gamma_init), ("gamma_final", gamma_final)):
            check_number(name, gamma)
            if not 0 <= gamma < 1:
                raise ValueError(f"{name} must be in [0, 1), got {gamma!r}")
        self.norm = norm
        self.steps = int(steps)
        self.alpha_init = float(alpha_init)
        self.alpha_final = float(alpha_final)
        self.gamma_init = float(gamma_init)
        self.gamma_final = float(gamma_final)
        self.targets = TargetMode(target_mode)

    def run(self, objective: Objective, images: Tensor, target: Any, random: SampleRandom) -> AttackResult:
        goal = self.targets.resolve(objective, images, target, random)
        p, dual, project = BALLS[self.norm]
        worst = torch.maximum(images, 1 - images).flatten(1).norm(p=p, dim=1)
        radius = torch.full_like(worst, math.inf)
        best_norm = torch.full_like(worst, math.inf)
        best_adv = images.clone()
        found = torch.zeros_like(worst, dtype=torch.bool)
        adv = images.clone()
        recorder = TraceRecorder(images)
        for k in range(1, self.steps + 1):
            gradient, loss, adversarial = self.margin_gradient(objective, adv, goal)
            size = (adv - images).flatten(1).norm(p=p, dim=1)
            smaller = adversarial & (size < best_norm)
            best_norm = torch.where(smaller, size, best_norm)
            best_adv = torch.where(per_sample(smaller, adv), adv, best_adv)
            found |= adversarial
            gamma = cosine_annealing(self.gamma_init, self.gamma_final, k, self.steps)
            estimate = size + loss.abs() / gradient.flatten(1).norm(p=dual, dim=1).clamp_min(TINY)
            grown = torch.where(found, radius * (1 + gamma), estimate)
            radius = torch.where(adversarial, torch.minimum(radius * (1 - gamma), best_norm), grown).minimum(worst)
            alpha = cosine_annealing(self.alpha_init, self.alpha_final, k, self.steps)
            step = alpha * gradient / per_sample(gradient.flatten(1).norm(dim=1).clamp_min(TINY), gradient)
            adv = (images + project(adv - images + step, radius)).clamp(0.0, 1.0)
            recorder.step(adv - images, best_norm > 0)
        return AttackResult(best_adv, recorder.finish(best_adv - images), {"norms": best_norm})

    def margin_gradient(self, objective: Objective, adv: Tensor, goal: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """g = -grad L at the iterate (Algorithm 1, line 3), the margin L (>= 0 until adversarial) and whether
        the iterate is adversarial by its arg-max."""
        x = adv.detach().requires_grad_(True)
        logits = require_class_logits(objective.logits(objective.forward(x)), "FMN")
        loss = signed_margin(logits, goal, self.targets.targeted)
        (gradient,) = torch.autograd.grad(-loss.sum(), x)
        return gradient, loss.detach(), succeeded(logits.detach(), goal, self.targets.targeted)
