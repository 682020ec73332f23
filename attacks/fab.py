"""FAB: the Fast Adaptive Boundary attack (Croce & Hein, ICML 2020), untargeted and targeted (FAB-T), in L1, L2
and Linf, as a minimal-norm attack or, given eps, as AutoAttack runs it."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import Tensor

from attacks.base import (
    Attack,
    AttackResult,
    Objective,
    RowTrace,
    SampleRandom,
    check_budget,
    check_fraction,
    check_positive,
    check_steps,
)
from attacks.blackbox import require_class_logits
from attacks.deepfool import nearest_linear_boundary
from attacks.fmn import BALLS
from attacks.norms import TINY, per_sample


def oriented(points: Tensor, normal: Tensor, offset: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """The constraint <normal, delta> = offset on (B, D) rows turned so that offset >= 0, and each coordinate's
    room: how far points + delta can move along sign(normal) inside [0, 1]."""
    normal = normal * torch.where(offset < 0, -1.0, 1.0).unsqueeze(1)
    room = torch.where(normal > 0, 1 - points, points)
    return normal, offset.abs(), room


def scaled_box_step(points: Tensor, normal: Tensor, offset: Tensor, rate: Tensor) -> Tensor:
    """delta_i = sign(w_i) min(s rate_i, room_i) with the smallest s >= 0 giving <w, delta> = offset (the box
    corner that comes closest where no s does); <w, delta> is piecewise linear in s, so one sort finds s."""
    normal, offset, room = oriented(points, normal, offset)
    weight = normal.abs()
    knots, order = torch.where(rate > 0, room / rate.clamp_min(TINY), math.inf).sort(dim=1)
    full = (weight * room).gather(1, order)
    slope = (weight * rate).gather(1, order).flip(1).cumsum(dim=1).flip(1)  # coordinates k.. still growing
    before = full.cumsum(dim=1) - full  # coordinates ..k-1 already at their room
    reach = torch.where(slope > 0, before + knots * slope, before)  # <w, delta> at s = knot k, nondecreasing
    count = (reach < offset.unsqueeze(1)).sum(dim=1, keepdim=True)
    index = count.clamp(max=points.shape[1] - 1)
    scale = (offset.unsqueeze(1) - before.gather(1, index)) / slope.gather(1, index).clamp_min(TINY)
    scale = torch.where(count == points.shape[1], math.inf, scale)
    return normal.sign() * torch.where(rate > 0, torch.minimum(scale * rate, room), 0.0)


def linf_hyperplane_step(points: Tensor, normal: Tensor, offset: Tensor) -> Tensor:
    """The box-constrained projection proj_inf: the smallest-Linf delta with <normal, delta> = offset and points +
    delta in [0, 1]; every coordinate moves by the same rho along sign(normal) unless the box stops it first."""
    return scaled_box_step(points, normal, offset, torch.ones_like(normal))


def l2_hyperplane_step(points: Tensor, normal: Tensor, offset: Tensor) -> Tensor:
    """The box-constrained projection proj_2: the smallest-L2 delta with <normal, delta> = offset in the box, by KKT
    delta = clip(lambda normal, -points, 1 - points) for the lambda >= 0 that meets the hyperplane."""
    return scaled_box_step(points, normal, offset, normal.abs())


def l1_hyperplane_step(points: Tensor, normal: Tensor, offset: Tensor) -> Tensor:
    """The box-constrained projection proj_1: the smallest-L1 delta with <normal, delta> = offset in the box, a
    fractional knapsack: the coordinates of largest |normal_i| move first, each up to its room."""
    normal, offset, room = oriented(points, normal, offset)
    weight, order = normal.abs().sort(dim=1, descending=True)
    room = room.gather(1, order)
    filled = (weight * room).cumsum(dim=1)
    count = (filled < offset.unsqueeze(1)).sum(dim=1, keepdim=True)  # coordinates moved by their whole room
    index = count.clamp(max=points.shape[1] - 1)
    last = (offset.unsqueeze(1) - (filled - weight * room).gather(1, index)) / weight.gather(1, index).clamp_min(TINY)
    ranks = torch.arange(points.shape[1], device=points.device).unsqueeze(0)
    size = torch.where(ranks < count, room, torch.where(ranks == count, last, 0.0))
    return normal.sign() * torch.zeros_like(size).scatter(1, order, size)


HYPERPLANE_STEPS: dict[str, Callable[[Tensor, Tensor, Tensor], Tensor]] = {
    "l1": l1_hyperplane_step,
    "l2": l2_hyperplane_step,
    "linf": linf_hyperplane_step,
}
"""norm name -> proj_p(points, hyperplane, box): the minimal step onto <normal, delta> = offset within [0, 1]."""


class FAB(Attack):
    """FAB (Croce & Hein, ICML 2020, Algorithm 1): step onto the closest linearised boundary pi_s, biased towards
    x_orig by a = min(|delta| / (|delta| + |delta_orig|), alpha_max), overshoot eta, backward step beta once fooled;
    smallest adversarial norm in ``extras["norms"]``; eps set: AutoAttack's rule (see docs/attacks/fab.md)."""

    name = "fab"

    def __init__(
        self,
        eps: float | None = None,
        norm: str = "linf",
        steps: int = 100,
        n_restarts: int = 1,
        alpha_max: float = 0.1,
        eta: float = 1.05,
        beta: float = 0.9,
        seed: int = 0,
    ) -> None:
        super().__init__(seed=seed)
        if eps is not None:
            check_budget("eps", eps, norm, allow_zero=False)
        if not isinstance(norm, str) or norm not in HYPERPLANE_STEPS:
            raise ValueError(f"norm must be one of {sorted(HYPERPLANE_STEPS)}, got {norm!r}")
        check_steps("steps", steps)
        check_steps("n_restarts", n_restarts)
        check_fraction("alpha_max", alpha_max, allow_zero=True)
        check_positive("eta", eta)
        if eta < 1:
            raise ValueError(f"eta (the overshoot) must be a finite number >= 1, got {eta!r}")
        check_fraction("beta", beta)
        self.eps = None if eps is None else float(eps)
        self.norm = norm
        self.steps = int(steps)
        self.n_restarts = int(n_restarts)
        self.alpha_max = float(alpha_max)
        self.eta = float(eta)
        self.beta = float(beta)

    def run(self, objective: Objective, images: Tensor, target: Any, random: SampleRandom) -> AttackResult:
        with torch.no_grad():
            clean_logits = require_class_logits(objective.logits(objective.forward(images)), type(self).__name__)
        best_norm = torch.where(clean_logits.argmax(dim=1) == target, math.inf, 0.0).to(images.dtype)
        best_adv = images.clone()
        trace = RowTrace(images)
        for goals in self.goals(clean_logits):
            for restart in range(self.n_restarts):
                # drawn for the whole batch, so that a sample's draws do not depend on which others are pending
                direction = self.random_direction(images, random) if restart else None
                rows = self.pending(best_norm, restart > 0).nonzero().squeeze(1)
                if not len(rows):
                    continue
                start = images[rows]
                if direction is not None:
                    radius = best_norm[rows].clamp(max=math.inf if self.eps is None else self.eps) / 2
                    start = (start + per_sample(radius, start) * direction[rows]).clamp(0.0, 1.0)
                adv, size = self.search(objective, images[rows], target[rows], None if goals is None else goals[rows],
                                        start, lambda x, rows=rows: trace.step(x, rows))
                better = size < best_norm[rows] if self.eps is None else size <= self.eps
                best_norm[rows] = torch.where(better, size, best_norm[rows])
                best_adv[rows] = torch.where(per_sample(better, adv), adv, best_adv[rows])
        return AttackResult(best_adv, trace.recorder.finish(best_adv - images), {"norms": best_norm})

    def goals(self, clean_logits: Tensor) -> Iterator[Tensor | None]:
        """The target class of each run: none, untargeted (every other class's boundary is considered)."""
        yield None

    def pending(self, best_norm: Tensor, restart: bool) -> Tensor:
        """(B,) bool, the samples a run attacks: correctly classified ones (norm > 0) not yet fooled within eps;
        with eps None all of them, and on a random restart only those with an adversarial to centre it on."""
        if self.eps is not None:
            return best_norm > self.eps
        return (best_norm > 0) & (torch.isfinite(best_norm) if restart else True)

    def random_direction(self, images: Tensor, random: SampleRandom) -> Tensor:
        """(B, ...) random directions of unit Lp norm: uniform in the cube for Linf, Gaussian for L2 and L1."""
        if self.norm == "linf":
            noise = 2 * random.draw(torch.rand, images.shape[1:], dtype=images.dtype) - 1
        else:
            noise = random.draw(torch.randn, images.shape[1:], dtype=images.dtype)
        size = noise.flatten(1).norm(p=BALLS[self.norm][0], dim=1).clamp_min(TINY)
        return noise / per_sample(size, noise)

    def search(
        self,
        objective: Objective,
        images: Tensor,
        labels: Tensor,
        goals: Tensor | None,
        start: Tensor,
        on_step: Callable[[Tensor], None],
    ) -> tuple[Tensor, Tensor]:
        """One run of Algorithm 1 from ``start``: the smallest adversarial iterate found for each sample and its
        Lp norm (inf and the clean image where none was found)."""
        p = BALLS[self.norm][0]
        project = HYPERPLANE_STEPS[self.norm]
        origin = images.flatten(1)
        best_norm = torch.full_like(origin[:, 0], math.inf)
        best_adv = images.clone()
        x = start
        for _ in range(self.steps):
            normal, gap = self.closest_boundary(objective, x, labels, goals)
            normal, here = normal.flatten(1), x.flatten(1)
            # pi_s: gap + <normal, z - x> = 0; delta = proj_p(x, pi_s, C), delta_orig = proj_p(x_orig, pi_s, C)
            step = project(here, normal, -gap)
            step_orig = project(origin, normal, -gap - torch.linalg.vecdot(normal, origin - here))
            size = step.norm(p=p, dim=1).clamp_min(TINY)
            size_orig = step_orig.norm(p=p, dim=1).clamp_min(TINY)
            alpha = (size / (size + size_orig)).clamp(max=self.alpha_max).unsqueeze(1)
            here = ((1 - alpha) * (here + self.eta * step) + alpha * (origin + self.eta * step_orig)).clamp(0.0, 1.0)
            x = here.view_as(images)
            with torch.no_grad():
                fooled = objective.logits(objective.forward(x)).argmax(dim=1) != labels
            distance = (here - origin).norm(p=p, dim=1)
            smaller = fooled & (distance < best_norm)
            best_norm = torch.where(smaller, distance, best_norm)
            best_adv = torch.where(per_sample(smaller, x), x, best_adv)
            on_step(x)
            x = torch.where(per_sample(fooled, x), images + self.beta * (x - images), x)  # the backward step
        return best_adv, best_norm

    def closest_boundary(
        self, objective: Objective, x: Tensor, labels: Tensor, goals: Tensor | None
    ) -> tuple[Tensor, Tensor]:
        """The closest linearised boundary pi_s: w = grad(f_s - f_c) and f_s - f_c at x, s minimising
        |f_l - f_c| / ||grad(f_l - f_c)||_q over l != c (q the dual exponent), or s = the goal when given."""
        x = x.detach().requires_grad_(True)
        logits = objective.logits(objective.forward(x))
        if goals is None:
            others = torch.arange(logits.shape[1] - 1, device=x.device).expand(len(x), -1)
            others = others + (others >= labels.unsqueeze(1)).long()  # every class but the label, in order
        else:
            others = goals.unsqueeze(1)
        normal, gap, _ = nearest_linear_boundary(logits, x, labels, others, dual=BALLS[self.norm][1])
        return normal, gap


class FABTargeted(FAB):
    """FAB-T (Croce & Hein, ICML 2020; AutoAttack's version): FAB on the boundary of one target class at a time,
    the classes ranked 2nd..(n_target_classes + 1)th by the clean logits; any misclassification counts as fooled."""

    name = "fab_t"

    def __init__(self, n_target_classes: int = 9, **options: Any) -> None:
        super().__init__(**options)
        check_steps("n_target_classes", n_target_classes)
        self.n_target_classes = int(n_target_classes)

    def goals(self, clean_logits: Tensor) -> Iterator[Tensor | None]:
        """The classes ranked 2nd, 3rd, ... by the clean logits, one per run."""
        ranked = clean_logits.argsort(dim=1, descending=True)
        for rank in range(1, min(self.n_target_classes, clean_logits.shape[1] - 1) + 1):
            yield ranked[:, rank]
