"""ALMA prox: minimal-Linf adversarial perturbations for dense prediction by an augmented Lagrangian with
proximal splitting (Rony, Pesquet, Ben Ayed, "Proximal Splitting Adversarial Attacks for Semantic
Segmentation", CVPR 2023)."""

from __future__ import annotations

import math
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
)
from attacks.norms import per_sample
from attacks.progress import BestIterate
from attacks.segmentation_losses import pixel_scores

METRIC_FLOOR = 1e-8  # smallest diagonal entry of the RMSProp metric H
MULTIPLIER_BOUNDS = (1e-12, 1.0)  # the multipliers mu are kept in this interval
SCALE_MAX = 1.0  # the constraint scale w starts here and never exceeds it


def difference_of_logits_ratio(logits: Tensor, labels: Tensor, tolerance: float) -> Tensor:
    """(B, P) constraint values, > 0 while a position is still predicted as its label: (z_y - max_{k != y} z_k +
    tolerance) / (z_pi1 - z_pi3), the DLR of Croce & Hein (2020), as the authors' implementation uses it. With
    two classes z_pi3 does not exist (and z_pi1 - z_pi2 would make the ratio +-1): the plain margin
    z_y - z_other + tolerance."""
    own = logits.gather(1, labels.unsqueeze(1)).squeeze(1)
    others = logits.scatter(1, labels.unsqueeze(1), -math.inf).amax(dim=1)
    margin = own - others + tolerance
    if logits.shape[1] < 3:
        return margin
    top = logits.topk(3, dim=1).values
    return margin / (top[:, 0] - top[:, 2] + 1e-8)


def penalty_derivative(y: Tensor, rho: Tensor, mu: Tensor) -> Tensor:
    """P2'(y) for the penalty-Lagrangian P2 (y >= 0: mu y + mu rho y^2 + rho^2 y^3 / 6; y < 0: mu y / (1 - rho y)),
    with rho at least 1 on the satisfied side as in the authors' implementation: it drives both the multiplier
    update mu <- P2'(g) and the gradient of the penalty sum_i P2(g_i) through the constraints g."""
    violated = mu + 2 * mu * rho * y + 0.5 * rho.square() * y.square()
    satisfied = mu / (1 - rho.clamp_min(1) * y.clamp_max(0)).square()
    return torch.where(y >= 0, violated, satisfied)


def prox_linf_box(v: Tensor, step: Tensor, metric: Tensor, lower: Tensor, upper: Tensor) -> Tensor:
    """prox of step * ||.||_inf + indicator([lower, upper]) in the diagonal metric H, per sample, exactly:
    argmin_u 1/2 sum_i H_i (u_i - v_i)^2 + step ||u||_inf with lower <= u <= upper (lower <= 0 <= upper).

    For a fixed t = ||u||_inf the minimiser is clamp(clamp(v, lower, upper), -t, t); the remaining
    function of t is convex with derivative step - sum_{|u_i| > t} H_i (|v_i| - t), piecewise linear
    between the sorted |clamp(v)|, so one sort finds its root t* (instead of the paper's ternary search).
    """
    flat = v.flatten(1)
    inside = flat.clamp(lower.flatten(1), upper.flatten(1))
    reach, order = inside.abs().sort(dim=1, descending=True)
    weight = metric.flatten(1).gather(1, order)
    pull = (weight * flat.abs().gather(1, order)).cumsum(dim=1)
    mass = weight.cumsum(dim=1)
    # slope of the objective just above each knot t = reach_k: step - sum_{j < k} H_j (|v_j| - reach_k)
    above = torch.cat([torch.zeros_like(pull[:, :1]), pull[:, :-1] - reach[:, 1:] * mass[:, :-1]], dim=1)
    count = (above <= step.unsqueeze(1)).sum(dim=1, keepdim=True)  # knots with a nonnegative slope above
    root = (pull.gather(1, count - 1) - step.unsqueeze(1)) / mass.gather(1, count - 1)
    below = torch.cat([reach, torch.zeros_like(reach[:, :1])], dim=1).gather(1, count)
    radius = torch.minimum(root.clamp_min(below), reach.gather(1, count - 1))
    return inside.clamp(-radius, radius).view_as(v)


def masked_largest(values: Tensor, valid: Tensor, drop: Tensor) -> Tensor:
    """``valid`` (B, P) without the ``drop[b]`` largest ``values`` of each row among its valid positions."""
    kept = valid.clone()
    most = int(drop.max())
    if most > 0:
        largest = values.masked_fill(~valid, -math.inf).topk(most, dim=1).indices
        dropped = torch.arange(most, device=values.device).unsqueeze(0) < drop.unsqueeze(1)
        kept.scatter_(1, largest, kept.gather(1, largest) & ~dropped)
    return kept


class Lagrangian:
    """The multiplier mu and penalty parameter rho of every position's constraint g: mu follows an exponential
    moving average of P2'(g) (0 for masked constraints); every ``check_every`` steps rho grows by ``gamma`` where
    the constraint is kept (not masked), its position was not fooled since the last check and g did not fall to
    ``tau`` times its value there."""

    def __init__(self, attack: ALMAProx, valid: Tensor) -> None:
        self.attack = attack
        self.mu = torch.full(valid.shape, attack.mu_init, device=valid.device, dtype=torch.float64)
        self.rho = torch.full_like(self.mu, attack.rho_init)
        self.fooled = torch.zeros_like(valid)
        self.checked: Tensor | None = None

    def weights(self, step: int, constraints: Tensor, kept: Tensor, fooled: Tensor) -> Tensor:
        """dP2(g)/dg after this step's updates: the weight of each constraint's gradient (0 where masked)."""
        attack, values = self.attack, constraints.double()
        self.fooled |= fooled
        if self.checked is None:
            self.checked = values
        elif (step + 1) % attack.check_every == 0:
            stalled = kept & ~self.fooled & (values > attack.tau * self.checked)
            self.rho = torch.where(stalled, attack.gamma * self.rho, self.rho)
            self.checked, self.fooled = values, torch.zeros_like(self.fooled)
        if step > 0:
            moved = torch.where(kept, penalty_derivative(values, self.rho, self.mu), 0.0)
            self.mu = torch.lerp(self.mu, moved, 1 - attack.alpha).clamp(*MULTIPLIER_BOUNDS)
        return torch.where(kept, penalty_derivative(values, self.rho, self.mu), 0.0).to(constraints.dtype)


class ALMAProx(Attack):
    """ALMA prox (Rony, Pesquet & Ben Ayed, CVPR 2023): per image, the smallest Linf perturbation that fools at
    least ``fooled_pixels`` of the valid positions, by an augmented Lagrangian on one DLR constraint per position.

    Per step i of ``steps``: the constraints g = w DLR (> 0 while a position is correct) with the scale w
    divided by 1 + ``scale_rate`` while adversarial and by 1 - ``scale_rate`` otherwise (in [``scale_min``, 1]);
    the largest fraction (1 - fooled_pixels) i / (steps - 1) of them masked out; mu and rho updated (``Lagrangian``);
    then a forward-backward step in the RMSProp metric H (moving average ``alpha``):
    delta <- prox^H_{lambda ||.||_inf + box}(delta - lambda H^-1 grad sum_i P2(g_i)), lambda decaying from
    ``lr`` to ``lr`` * ``lr_reduction`` after the first success. The smallest adversarial iterate is kept; its
    Linf norm is in ``extras["norms"]`` (0: already fooled clean, returned unchanged; inf: never reached, the
    iterate that fooled most positions is returned). Untargeted; positions with labels outside [0, K) are ignored.
    """

    name = "alma_prox"

    def __init__(
        self,
        fooled_pixels: float = 0.99,
        steps: int = 500,
        lr: float = 0.001,
        lr_reduction: float = 0.1,
        mu_init: float = 1.0,
        rho_init: float = 0.01,
        check_every: int = 10,
        tau: float = 0.95,
        gamma: float = 2.0,
        alpha: float = 0.8,
        scale_min: float = 0.1,
        scale_rate: float = 0.02,
        logit_tolerance: float = 1e-4,
        seed: int = 0,
    ) -> None:
        super().__init__(seed)
        check_fraction("fooled_pixels", fooled_pixels)
        check_steps("steps", steps, minimum=2)
        check_positive("lr", lr, allow_zero=False)
        check_fraction("lr_reduction", lr_reduction)
        check_fraction("mu_init", mu_init)
        check_positive("rho_init", rho_init, allow_zero=False)
        check_steps("check_every", check_every)
        check_fraction("tau", tau)
        check_positive("gamma", gamma)
        if gamma < 1:
            raise ValueError(f"gamma must be >= 1, got {gamma!r}")
        check_fraction("alpha", alpha, allow_zero=True)
        if alpha == 1:
            raise ValueError(f"alpha must be in [0, 1), got {alpha!r}")
        check_fraction("scale_min", scale_min)
        check_fraction("scale_rate", scale_rate, allow_zero=True)
        if scale_rate == 1:
            raise ValueError(f"scale_rate must be in [0, 1), got {scale_rate!r}")
        check_positive("logit_tolerance", logit_tolerance)
        self.fooled_pixels = float(fooled_pixels)
        self.steps = int(steps)
        self.lr = float(lr)
        self.lr_reduction = float(lr_reduction)
        self.mu_init = float(mu_init)
        self.rho_init = float(rho_init)
        self.check_every = int(check_every)
        self.tau = float(tau)
        self.gamma = float(gamma)
        self.alpha = float(alpha)
        self.scale_min = float(scale_min)
        self.scale_rate = float(scale_rate)
        self.logit_tolerance = float(logit_tolerance)

    def run(self, objective: Objective, images: Tensor, target: Any, random: SampleRandom) -> AttackResult:
        delta = torch.zeros_like(images)
        square_average = torch.zeros_like(images)
        scale = torch.full((len(images),), SCALE_MAX, device=images.device)
        step_found = torch.full((len(images),), self.steps // 2, device=images.device)
        best = BestIterate(images)
        recorder = TraceRecorder(images)
        for i in range(self.steps):
            x = (images + delta).requires_grad_(True)
            outputs = objective.forward(x)
            scores = pixel_scores(objective, outputs, target)
            if i == 0:
                lagrangian, counted = Lagrangian(self, scores.valid), scores.valid.sum(dim=1)
            fooled = scores.valid & ~scores.correct()
            fraction = fooled.sum(dim=1) / counted.clamp_min(1)
            adversarial = (fraction >= self.fooled_pixels) | (counted == 0)
            if i < self.steps // 2:
                step_found = torch.where(adversarial & ~best.found, i, step_found)
            best.update(x, delta.flatten(1).abs().amax(dim=1), fraction, adversarial)
            active = best.norms > 0  # fooled without any perturbation: nothing left to minimise

            rate = torch.where(adversarial, 1 + self.scale_rate, 1 - self.scale_rate)
            scale = (scale / rate).clamp(self.scale_min, SCALE_MAX)
            constraints = scale.unsqueeze(1) * difference_of_logits_ratio(
                scores.logits, scores.labels, self.logit_tolerance
            )
            masked = ((1 - self.fooled_pixels) * counted * i / (self.steps - 1)).long()
            kept = masked_largest(constraints.detach(), scores.valid, masked)
            weights = lagrangian.weights(i, constraints.detach(), kept, fooled)
            (gradient,) = torch.autograd.grad(constraints, x, grad_outputs=weights)
            rows = active.nonzero().squeeze(1)
            recorder.record_loss(objective.loss(outputs, target).detach()[rows], rows)

            square_average = torch.lerp(square_average, gradient.square(), 1 - self.alpha)
            metric = (square_average / (1 - self.alpha ** (i + 1))).sqrt().clamp_min(METRIC_FLOOR)
            step = self.lr * self.decay(i, step_found)
            moved = delta - per_sample(step, delta) * gradient / metric
            delta = torch.where(
                per_sample(active, delta), prox_linf_box(moved, step, metric, -images, 1 - images), delta
            )
            recorder.step(delta, active)
        return AttackResult(best.adv, recorder.finish(best.adv - images), {"norms": best.norms})

    def decay(self, i: int, step_found: Tensor) -> Tensor:
        """lambda_i / lr: 1 until the step the first adversarial was found (at the latest steps // 2), then a
        hyperbolic decay that reaches ``lr_reduction`` at the last step."""
        if self.lr_reduction == 1:
            return torch.ones_like(step_found, dtype=torch.float)
        span = self.lr_reduction / (1 - self.lr_reduction) * (self.steps - step_found).clamp_min(1)
        return span / ((i - step_found).clamp_min(0) + span)
