"""Carlini-Wagner attacks on the margin of ``objective.logits`` against ``objective.dense_target``.

Both work per position: one position for classification, every pixel for segmentation. A dense task's
margin loss is the mean over positions of the per-position clamped margin; since the clamp at -kappa
zeroes the gradient of positions already fooled with confidence kappa, the mean spends the step on the
positions still to fool, and its scale stays that of one position, so ``c`` means the same for every task.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from attacks.base import (
    Attack,
    AttackResult,
    Objective,
    SampleRandom,
    TraceRecorder,
    check_fraction,
    check_positive,
    check_steps,
    fooled_fraction,
)
from attacks.gradient import PGD
from attacks.norms import per_sample
from attacks.targets import TargetMode

UNBOUNDED = 1e10
TANH_SCALE = 1 - 1e-6
ABORT_RATIO = 0.9999


def class_margin(logits: Tensor, labels: Tensor) -> Tensor:
    """Per position, z_label - max_{j != label} z_j; class dimension 1, labels without it."""
    chosen = torch.zeros_like(logits, dtype=torch.bool).scatter_(1, labels.unsqueeze(1), True)
    label_logit = logits.masked_fill(~chosen, float("-inf")).amax(dim=1)
    best_other = logits.masked_fill(chosen, float("-inf")).amax(dim=1)
    return label_logit - best_other


def signed_margin(logits: Tensor, labels: Tensor, targeted: bool) -> Tensor:
    """The margin an attack drives below -kappa: true-class lead (untargeted) or goal-class deficit."""
    margin = class_margin(logits, labels)
    return -margin if targeted else margin


def margin_loss(signed: Tensor, kappa: float) -> Tensor:
    """Per-sample (B,) CW loss max(margin, -kappa) (Ma et al. 2020, Eq. 8), averaged over positions."""
    clamped = signed.clamp(min=-kappa)
    return clamped.flatten(1).mean(dim=1) if clamped.dim() > 1 else clamped


class CWLinf(PGD):
    """CW-Linf: PGD minimising max(z_y - max_{j != y} z_j, -kappa) (Ma et al. 2020, Eq. 7-8; Carlini &
    Wagner 2017, f_6). Targeted modes minimise max(max_{j != t} z_j - z_t, -kappa) instead.

    PGD's defaults (random start, 10 steps of 2.5 eps / steps); Ma et al. use 20 steps of eps / 10 (their
    suite's config).
    """

    name = "cw_linf"

    def __init__(self, kappa: float = 0.0, **options: Any) -> None:
        super().__init__(**options)
        check_positive("kappa", kappa)
        self.kappa = float(kappa)

    def step_loss(
        self, objective: Objective, outputs: Any, adv: Tensor, images: Tensor, target: Any, step: int
    ) -> Tensor:
        labels = objective.dense_target(outputs, target)
        signed = signed_margin(objective.logits(outputs), labels, self.targets.targeted)
        return -margin_loss(signed, self.kappa)


class CWL2(Attack):
    """CW-L2 (Carlini & Wagner 2017, Sec. V.A): minimise ||x' - x||_2^2 + c * max(margin, -kappa) over
    x' = (tanh(w) + 1) / 2 with Adam, and binary-search c per sample, keeping each sample's smallest
    adversarial. Defaults are the paper's code: 9 search steps, 10000 Adam steps (abort early), lr 0.01,
    c0 = 1e-3. A sample counts as adversarial when at least ``min_fooled`` of its positions are fooled
    (classification has one position, so any value means "fooled"; for segmentation the default is a
    majority of pixels); a sample never adversarial is returned unchanged.
    """

    name = "cw_l2"

    def __init__(
        self,
        kappa: float = 0.0,
        initial_const: float = 1e-3,
        binary_search_steps: int = 9,
        steps: int = 10000,
        lr: float = 0.01,
        abort_early: bool = True,
        min_fooled: float = 0.5,
        target_mode: str = "untargeted",
        seed: int = 0,
    ) -> None:
        super().__init__(seed=seed)
        check_positive("kappa", kappa)
        check_positive("initial_const", initial_const, allow_zero=False)
        check_steps("binary_search_steps", binary_search_steps)
        check_steps("steps", steps)
        check_positive("lr", lr, allow_zero=False)
        check_fraction("min_fooled", min_fooled)
        self.kappa = float(kappa)
        self.initial_const = float(initial_const)
        self.binary_search_steps = int(binary_search_steps)
        self.steps = int(steps)
        self.lr = float(lr)
        self.abort_early = bool(abort_early)
        self.min_fooled = float(min_fooled)
        self.targets = TargetMode(target_mode)

    def run(self, objective: Objective, images: Tensor, target: Any, random: SampleRandom) -> AttackResult:
        goal = self.targets.resolve(objective, images, target, random)
        const = torch.full((images.shape[0],), self.initial_const, device=images.device, dtype=images.dtype)
        lower = torch.zeros_like(const)
        upper = torch.full_like(const, UNBOUNDED)
        best_l2 = torch.full_like(const, float("inf"))
        best_adv = images.clone()
        recorder = TraceRecorder(images)
        for _ in range(self.binary_search_steps):
            succeeded = self.minimise(objective, images, goal, const, best_l2, best_adv, recorder)
            upper = torch.where(succeeded, torch.minimum(upper, const), upper)
            lower = torch.where(succeeded, lower, torch.maximum(lower, const))
            const = torch.where(upper < UNBOUNDED, (lower + upper) / 2, const * 10)
        return AttackResult(best_adv, recorder.finish(best_adv - images))

    def minimise(
        self,
        objective: Objective,
        images: Tensor,
        goal: Any,
        const: Tensor,
        best_l2: Tensor,
        best_adv: Tensor,
        recorder: TraceRecorder,
    ) -> Tensor:
        """Adam on w for one value of c per sample, updating ``best_l2`` / ``best_adv`` in place; returns
        which samples were adversarial at some step. With ``abort_early``, every steps / 10 a sample whose
        loss fell by less than 0.01% is frozen, and the search stops once all are (the paper's code does
        this on the batch total)."""
        w = torch.atanh((2 * images - 1) * TANH_SCALE).requires_grad_(True)
        optimiser = torch.optim.Adam([w], lr=self.lr)
        succeeded = torch.zeros_like(const, dtype=torch.bool)
        stalled = torch.zeros_like(succeeded)
        previous = torch.full_like(const, float("inf"))
        check_every = max(self.steps // 10, 1)
        freeze = False
        for step in range(self.steps):
            adv = (torch.tanh(w) + 1) / 2
            outputs = objective.forward(adv)
            labels = objective.dense_target(outputs, goal)
            signed = signed_margin(objective.logits(outputs), labels, self.targets.targeted)
            l2 = (adv - images).flatten(1).pow(2).sum(dim=1)
            loss = l2 + const * margin_loss(signed, self.kappa)
            (w.grad,) = torch.autograd.grad(loss.sum(), w)
            with torch.no_grad():
                fooled = fooled_fraction(signed < -self.kappa) >= self.min_fooled
                improved = fooled & (l2 < best_l2)
                best_l2.copy_(torch.where(improved, l2, best_l2))
                best_adv.copy_(torch.where(per_sample(improved, adv), adv, best_adv))
                succeeded |= fooled
                recorder.step(adv - images, ~stalled)
                if self.abort_early and step % check_every == 0:
                    stalled |= loss > previous * ABORT_RATIO
                    previous = loss.detach()
                    if stalled.all():
                        break
                    freeze = bool(stalled.any())
                frozen = w.detach().clone() if freeze else None
                optimiser.step()
                if frozen is not None:
                    w.copy_(torch.where(per_sample(stalled, w), frozen, w))
        return succeeded
