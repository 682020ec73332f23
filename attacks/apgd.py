"""Auto-PGD with the cross-entropy (task) loss: step-size-free PGD with momentum and checkpoints."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from attacks.base import AttackResult, Objective, SampleRandom, TraceRecorder, check_fraction
from attacks.gradient import GradientAttack
from attacks.norms import per_sample

FIRST_CHECKPOINT = 0.22
CHECKPOINT_SHRINK = 0.03
MIN_CHECKPOINT_GAP = 0.06


def checkpoints(steps: int) -> list[int]:
    """Iterations w_j = ceil(p_j * steps) at which APGD may halve its step (Croce & Hein 2020, Sec. 3.2):
    p_0 = 0, p_1 = 0.22, p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06)."""
    fractions = [0.0, FIRST_CHECKPOINT]
    while fractions[-1] <= 1.0:
        gap = max(fractions[-1] - fractions[-2] - CHECKPOINT_SHRINK, MIN_CHECKPOINT_GAP)
        fractions.append(fractions[-1] + gap)
    # rounding first keeps float error in the running sum (0.41 + 0.16 = 0.5700000000000001) from ceil
    return sorted({math.ceil(round(p * steps, 6)) for p in fractions[1:] if p <= 1.0} - {0})


class APGD(GradientAttack):
    """APGD-CE (Croce & Hein 2020, Algorithm 1; update Eq. 2; step-size conditions of Sec. 3.2).

    From eta = 2 eps: z = P(x_k + eta * step(g)), x_{k+1} = P(x_k + a (z - x_k) + (1 - a)(x_k - x_{k-1}))
    with momentum a (1 on the first step). At each checkpoint a sample halves eta and restarts from its
    best point when fewer than ``rho`` of the steps since the last checkpoint raised the loss
    (condition 1), or when eta was not halved at the last checkpoint and the best loss has not improved
    since (condition 2). Returns the highest-loss iterate.

    Keeps GradientAttack's ``step_loss`` hook (the task loss, negated for targeted modes), norm and
    targeted modes; defaults are AutoAttack's (100 steps, rho 0.75, momentum 0.75, random start).
    """

    name = "apgd_ce"
    defaults = {"eps": 8 / 255, "steps": 100, "random_start": True}
    fixed = {"alpha": None, "decay": 0.0, "kernel_size": None, "sigma": None, "early_stop": False}

    def __init__(self, rho: float = 0.75, momentum: float = 0.75, **options: Any) -> None:
        super().__init__(**options)
        check_fraction("rho", rho, allow_zero=True)
        check_fraction("momentum", momentum, allow_zero=True)
        self.rho = float(rho)
        self.momentum = float(momentum)
        self.checkpoints = set(checkpoints(self.steps))

    def default_alpha(self, eps: float, steps: int) -> float:
        """The initial step size eta = 2 eps of Algorithm 1."""
        return 2 * eps

    def run(self, objective: Objective, images: Tensor, target: Any, random: SampleRandom) -> AttackResult:
        goal = self.targets.resolve(objective, images, target, random)
        adv = self.initial_point(images, random)
        gradient, loss, _ = self.loss_gradient(objective, adv, images, goal, 0)
        best_adv, best_gradient, best_loss = adv, gradient, loss
        previous_adv, previous_loss = adv, loss
        step_size = torch.full_like(loss, self.alpha)
        increases = torch.zeros_like(loss)
        halved_last = torch.ones_like(loss, dtype=torch.bool)
        best_at_last_check = best_loss
        last_check = 0
        recorder = TraceRecorder(images)
        for step in range(self.steps):
            weight = 1.0 if step == 0 else self.momentum
            ascent = per_sample(step_size, adv) * self.norm.normalise_step(gradient)
            proposal = self.advance(images, adv, ascent)
            momentum = weight * (proposal - adv) + (1 - weight) * (adv - previous_adv)
            previous_adv, adv = adv, self.advance(images, adv, momentum)
            gradient, loss, _ = self.loss_gradient(objective, adv, images, goal, step + 1)
            increases = increases + (loss > previous_loss).to(loss.dtype)
            previous_loss = loss
            improved = loss > best_loss
            best_loss = torch.where(improved, loss, best_loss)
            best_adv = torch.where(per_sample(improved, adv), adv, best_adv)
            best_gradient = torch.where(per_sample(improved, adv), gradient, best_gradient)
            recorder.step(adv - images)
            if step + 1 in self.checkpoints:
                oscillating = increases < self.rho * (step + 1 - last_check)
                stalled = ~halved_last & (best_at_last_check >= best_loss)
                halve = oscillating | stalled
                step_size = torch.where(halve, step_size / 2, step_size)
                adv = torch.where(per_sample(halve, adv), best_adv, adv)
                gradient = torch.where(per_sample(halve, adv), best_gradient, gradient)
                halved_last, best_at_last_check = halve, best_loss
                increases = torch.zeros_like(increases)
                last_check = step + 1
        return AttackResult(best_adv, recorder.finish(best_adv - images))
