"""Auto-PGD (Croce & Hein 2020): step-size-free PGD with momentum and checkpoints, on the task loss (APGD-CE),
the difference of logits ratio (APGD-DLR) or its targeted form (APGD-T)."""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterator
from functools import partial
from typing import Any, NamedTuple

import torch
from torch import Tensor

from attacks.base import AttackResult, Objective, RowTrace, SampleRandom, check_fraction, check_steps
from attacks.blackbox import require_class_logits
from attacks.gradient import GradientAttack, put, take
from attacks.norms import per_sample

FIRST_CHECKPOINT = 0.22
CHECKPOINT_SHRINK = 0.03
MIN_CHECKPOINT_GAP = 0.06
DLR_EPS = 1e-12  # the paper's floor on the DLR denominator


def checkpoints(steps: int) -> list[int]:
    """Iterations w_j = ceil(p_j * steps) at which APGD may halve its step (Croce & Hein 2020, Sec. 3.2):
    p_0 = 0, p_1 = 0.22, p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06)."""
    fractions = [0.0, FIRST_CHECKPOINT]
    while fractions[-1] <= 1.0:
        gap = max(fractions[-1] - fractions[-2] - CHECKPOINT_SHRINK, MIN_CHECKPOINT_GAP)
        fractions.append(fractions[-1] + gap)
    # rounding first keeps float error in the running sum (0.41 + 0.16 = 0.5700000000000001) from ceil
    return sorted({math.ceil(round(p * steps, 6)) for p in fractions[1:] if p <= 1.0} - {0})


def dlr_loss(logits: Tensor, true: Tensor, towards: Tensor | None = None) -> Tensor:
    """Per-sample DLR of (B, K) ``logits``, -(z_y - max_{i != y} z_i) / (z_pi1 - z_pi3) (Croce & Hein 2020,
    Eq. 5), or with ``towards`` = t the targeted DLR -(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4) / 2) (Eq. 6);
    both + 1e-12 below. Fallbacks for K < 4 classes as in docs/attacks/gradient.md (see ``dlr_denominator``)."""
    true_logit = logits.gather(1, true[:, None]).squeeze(1)
    if towards is None:
        other = logits.scatter(1, true[:, None], float("-inf")).amax(dim=1)
    else:
        other = logits.gather(1, towards[:, None]).squeeze(1)
    return (other - true_logit) / dlr_denominator(logits, targeted=towards is not None)


def dlr_denominator(logits: Tensor, targeted: bool) -> Tensor:
    """z_pi1 - z_pi3 (untargeted) or z_pi1 - (z_pi3 + z_pi4) / 2 (targeted), + 1e-12. With K = 3 the targeted
    form is z_pi1 - (z_pi2 + z_pi3) / 2 (z_pi1 - z_pi3 would make the loss -1, with zero gradient, for the
    target ranked 3rd); with K = 2 any denominator is |z_t - z_y|, so the loss is the plain margin z_t - z_y."""
    classes = logits.shape[1]
    if classes == 2:
        return torch.ones_like(logits[:, 0])
    top = logits.topk(min(classes, 4), dim=1).values
    if not targeted:
        return top[:, 0] - top[:, 2] + DLR_EPS
    return top[:, 0] - (top[:, -2] + top[:, -1]) / 2 + DLR_EPS  # the last two of the top 4 (of the 3 when K = 3)


def dlr_logits(objective: Objective, outputs: Any, needed_by: str) -> Tensor:
    """The (B, K) logits of ``outputs``; a ValueError naming ``needed_by`` unless they are classification
    logits of at least 2 classes."""
    logits = require_class_logits(objective.logits(outputs), needed_by)
    if logits.shape[1] < 2:
        raise ValueError(f"{needed_by} needs at least 2 classes, got logits of shape {tuple(logits.shape)}")
    return logits


class Kept(NamedTuple):
    """Per sample the point an APGD run returns, its loss and whether it fools the model: a fooling point
    beats one that does not, then the higher loss wins."""

    point: Tensor
    loss: Tensor
    fooled: Tensor

    def update(self, point: Tensor, loss: Tensor, fooled: Tensor) -> Kept:
        better = (fooled & ~self.fooled) | ((fooled == self.fooled) & (loss > self.loss))
        return Kept(
            torch.where(per_sample(better, point), point, self.point),
            torch.where(better, loss, self.loss),
            self.fooled | fooled,
        )

    def take(self, rows: Tensor | None) -> Kept:
        return Kept(*(take(value, rows) for value in self))

    def put(self, rows: Tensor | None, part: Kept) -> Kept:
        return Kept(*(put(value, rows, new) for value, new in zip(self, part, strict=True)))


class APGD(GradientAttack):
    """APGD-CE (Croce & Hein 2020, Algorithm 1; update Eq. 2; step-size conditions of Sec. 3.2).

    From eta = 2 eps: z = P(x_k + eta * step(g)), x_{k+1} = P(x_k + a (z - x_k) + (1 - a)(x_k - x_{k-1}))
    with momentum a (1 on the first step). At each checkpoint a sample halves eta and restarts from its
    best point when fewer than ``rho`` of the steps since the last checkpoint raised the loss
    (condition 1), or when eta was not halved at the last checkpoint and the best loss has not improved
    since (condition 2). Returns the highest-loss iterate of ``n_restarts`` runs from random starts.

    Keeps GradientAttack's ``step_loss`` hook (the task loss, negated for targeted modes), norm and
    targeted modes; defaults are AutoAttack's (100 steps, rho 0.75, momentum 0.75, random start).
    """

    name = "apgd_ce"
    defaults = {"eps": 8 / 255, "steps": 100, "random_start": True}
    fixed = {"alpha": None, "decay": 0.0, "kernel_size": None, "sigma": None, "early_stop": False}

    def __init__(self, rho: float = 0.75, momentum: float = 0.75, n_restarts: int = 1, **options: Any) -> None:
        super().__init__(**options)
        check_fraction("rho", rho, allow_zero=True)
        check_fraction("momentum", momentum, allow_zero=True)
        check_steps("n_restarts", n_restarts)
        self.rho = float(rho)
        self.momentum = float(momentum)
        self.n_restarts = int(n_restarts)
        self.checkpoints = set(checkpoints(self.steps))

    def default_alpha(self, eps: float, steps: int) -> float:
        """The initial step size eta = 2 eps of Algorithm 1."""
        return 2 * eps

    def fooled(self, objective: Objective, outputs: Any, adv: Tensor, labels: Any) -> Tensor:
        """(N,) bool: the points that reach the attack's goal, kept over higher-loss ones that do not; the
        task loss sets no such goal (all False), so the highest loss is kept."""
        return torch.zeros(len(adv), dtype=torch.bool, device=adv.device)

    def goals(self, objective: Objective, outputs: Any, labels: Any) -> Iterator[Any]:
        """The target of each run's loss, given the clean ``outputs``: the resolved target, once per restart."""
        return itertools.repeat(labels, self.n_restarts)

    def run(self, objective: Objective, images: Tensor, target: Any, random: SampleRandom) -> AttackResult:
        """Runs Algorithm 1 once per goal, each on the samples not fooled yet (all for the task loss)."""
        labels = self.targets.resolve(objective, images, target, random)
        with torch.no_grad():
            outputs = objective.forward(images)
        fooled = self.fooled(objective, outputs, images, labels)
        kept = Kept(images, torch.full(fooled.shape, -math.inf, device=images.device), fooled)
        trace = RowTrace(images)
        for goal in self.goals(objective, outputs, labels):
            if kept.fooled.all():
                break
            start = self.initial_point(images, random)  # drawn for the whole batch: per-sample draws stay put
            rows = (~kept.fooled).nonzero().squeeze(1) if kept.fooled.any() else None
            record = partial(trace.step, rows=rows)
            part = self.descend(
                objective, take(images, rows), take(start, rows), take(goal, rows), take(labels, rows), record
            )
            kept = kept.put(rows, kept.take(rows).update(*part))
        return AttackResult(kept.point, trace.recorder.finish(kept.point - images))

    def descend(
        self,
        objective: Objective,
        images: Tensor,
        adv: Tensor,
        goal: Any,
        labels: Any,
        record: Callable[[Tensor, Tensor], None],
    ) -> Kept:
        """One run of Algorithm 1 from ``adv`` with the loss taken against ``goal``; ``record`` sees each iterate
        and its loss. Returns per sample the iterate to keep (see ``Kept``), its loss and whether it fools."""
        gradient, loss, outputs = self.loss_gradient(objective, adv, images, goal, 0)
        kept = Kept(adv, loss, self.fooled(objective, outputs, adv, labels))
        best_adv, best_gradient, best_loss = adv, gradient, loss
        previous_adv, previous_loss = adv, loss
        step_size = torch.full_like(loss, self.alpha)
        increases = torch.zeros_like(loss)
        halved_last = torch.ones_like(loss, dtype=torch.bool)
        best_at_last_check = best_loss
        last_check = 0
        for step in range(self.steps):
            weight = 1.0 if step == 0 else self.momentum
            ascent = per_sample(step_size, adv) * self.norm.normalise_step(gradient)
            proposal = self.advance(images, adv, ascent)
            momentum = weight * (proposal - adv) + (1 - weight) * (adv - previous_adv)
            previous_adv, adv = adv, self.advance(images, adv, momentum)
            gradient, loss, outputs = self.loss_gradient(objective, adv, images, goal, step + 1)
            kept = kept.update(adv, loss, self.fooled(objective, outputs, adv, labels))
            increases = increases + (loss > previous_loss).to(loss.dtype)
            previous_loss = loss
            improved = loss > best_loss
            best_loss = torch.where(improved, loss, best_loss)
            best_adv = torch.where(per_sample(improved, adv), adv, best_adv)
            best_gradient = torch.where(per_sample(improved, adv), gradient, best_gradient)
            record(adv, loss=loss)
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
        return kept


class APGDDLR(APGD):
    """APGD-DLR: Algorithm 1 ascending the DLR loss (Croce & Hein 2020, Sec. 4, Eq. 5), untargeted; classifiers only.

    DLR > 0 exactly when a sample is misclassified, so the kept iterate is the highest-DLR one. As in AutoAttack,
    a sample the clean image already misclassifies is returned as it is, and restarts run on the samples not
    fooled yet. K = 2 classes: the margin max_{i != y} z_i - z_y (see ``dlr_denominator``).
    """

    name = "apgd_dlr"
    fixed = {"target_mode": "untargeted"}

    def step_loss(
        self, objective: Objective, outputs: Any, adv: Tensor, images: Tensor, target: Any, step: int
    ) -> Tensor:
        return dlr_loss(dlr_logits(objective, outputs, self.name), target)

    def fooled(self, objective: Objective, outputs: Any, adv: Tensor, labels: Any) -> Tensor:
        return dlr_logits(objective, outputs, self.name).detach().argmax(dim=1) != labels


class APGDT(APGDDLR):
    """APGD-T (Croce & Hein 2020, Sec. 4-5): APGD on the targeted DLR loss (Eq. 6) towards each of the
    k = min(n_target_classes, K - 1) classes with the highest clean logits other than the true one, in that
    order, each run on the samples not fooled yet: a sample keeps the point of the first target that fools
    it, else its highest-loss point. K < 4 classes: the fallbacks of ``dlr_denominator``.
    """

    name = "apgd_t"

    def __init__(self, n_target_classes: int = 9, **options: Any) -> None:
        super().__init__(**options)
        check_steps("n_target_classes", n_target_classes)
        self.n_target_classes = int(n_target_classes)

    def goals(self, objective: Objective, outputs: Any, labels: Any) -> Iterator[Tensor]:
        """(N, 2) pairs (true class, target class), per target class n_restarts times."""
        logits = dlr_logits(objective, outputs, self.name)
        ranked = logits.scatter(1, labels[:, None], float("-inf")).sort(dim=1, descending=True, stable=True)
        for towards in ranked.indices[:, : min(self.n_target_classes, logits.shape[1] - 1)].T:
            yield from itertools.repeat(torch.stack([labels, towards], dim=1), self.n_restarts)

    def step_loss(
        self, objective: Objective, outputs: Any, adv: Tensor, images: Tensor, target: Any, step: int
    ) -> Tensor:
        true, towards = target.unbind(dim=1)
        return dlr_loss(dlr_logits(objective, outputs, self.name), true, towards)
