"""Auto-PGD (Croce & Hein 2020): step-size-free PGD with momentum and checkpoints, on the task loss (APGD-CE),
the difference of logits ratio (APGD-DLR) or its targeted form (APGD-T)."""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterator
from typing import Any, ClassVar, NamedTuple

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


class Ascent(NamedTuple):
    """The per-sample state of one APGD run (Algorithm 1), cut to the samples still iterating."""

    images: Tensor
    goal: Any
    labels: Any
    adv: Tensor
    previous_adv: Tensor
    gradient: Tensor
    previous_loss: Tensor
    best_adv: Tensor
    best_gradient: Tensor
    best_loss: Tensor
    step_size: Tensor
    increases: Tensor
    halved_last: Tensor
    best_at_last_check: Tensor

    def take(self, keep: Tensor) -> Ascent:
        return Ascent(*(value[keep] for value in self))


class APGD(GradientAttack):
    """APGD-CE (Croce & Hein 2020, Algorithm 1; update Eq. 2; step-size conditions of Sec. 3.2).

    From eta = 2 eps: z = P(x_k + eta * step(g)), x_{k+1} = P(x_k + a (z - x_k) + (1 - a)(x_k - x_{k-1}))
    with momentum a (1 on the first step). At each checkpoint a sample halves eta and restarts from its
    best point when fewer than ``rho`` of the steps since the last checkpoint raised the loss
    (condition 1), or when eta was not halved at the last checkpoint and the best loss has not improved
    since (condition 2). Returns the highest-loss iterate of ``n_restarts`` runs from random starts.

    Keeps GradientAttack's ``step_loss`` hook (the task loss, negated for targeted modes), norm and
    targeted modes; defaults are AutoAttack's (100 steps, rho 0.75, momentum 0.75, random start).
    ``early_stop`` (classification only): a sample misclassified clean is returned unchanged, and a sample
    leaves the run at its first iterate that fools the model (reaches the goal when targeted), which it
    keeps; the other samples' iterates are those of the run without it. The clean forward pass that finds
    the samples fooled from the start is skipped where the caller promises none (``clean_unfooled``) and no
    goal needs the clean logits.
    """

    name = "apgd_ce"
    defaults = {"eps": 8 / 255, "steps": 100, "random_start": True}
    fixed = {"alpha": None, "decay": 0.0, "kernel_size": None, "sigma": None}
    goals_read_clean_outputs: ClassVar[bool] = False  # APGD-T ranks its target classes by the clean logits

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
        task loss sets no such goal (all False, so the highest loss is kept) unless ``early_stop`` makes
        fooling the model (reaching the target) the goal."""
        if self.early_stop:
            return ~self.not_fooled(objective, outputs, labels)
        return torch.zeros(len(adv), dtype=torch.bool, device=adv.device)

    def goals(self, objective: Objective, outputs: Any, labels: Any) -> Iterator[Any]:
        """The target of each run's loss, given the clean ``outputs`` (None where the attack skips the clean
        forward pass and ``goals_read_clean_outputs`` is False): the resolved target, once per restart."""
        return itertools.repeat(labels, self.n_restarts)

    def run(self, objective: Objective, images: Tensor, target: Any, random: SampleRandom) -> AttackResult:
        """Runs Algorithm 1 once per goal, each on the samples not fooled yet (all for the task loss)."""
        labels = self.targets.resolve(objective, images, target, random)
        outputs = None
        if not self.clean_unfooled or self.goals_read_clean_outputs:
            with torch.no_grad():
                outputs = objective.forward(images)
        if self.clean_unfooled:
            fooled = torch.zeros(len(images), dtype=torch.bool, device=images.device)
        else:
            fooled = self.fooled(objective, outputs, images, labels)
        kept = Kept(images, torch.full(fooled.shape, -math.inf, device=images.device), fooled)
        trace = RowTrace(images)
        for goal in self.goals(objective, outputs, labels):
            if kept.fooled.all():
                break
            start = self.initial_point(images, random)  # drawn for the whole batch: per-sample draws stay put
            rows = (~kept.fooled).nonzero().squeeze(1) if kept.fooled.any() else None

            def record(
                iterate: Tensor, loss: Tensor, outputs: Any, live: Tensor | None = None, rows: Tensor | None = rows
            ) -> None:
                trace.step(iterate, live if rows is None else take(rows, live), loss=loss)

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
        record: Callable[..., None],
    ) -> Kept:
        """One run of Algorithm 1 from ``adv`` with the loss taken against ``goal``; ``record`` sees each iterate
        with its loss and the model outputs there (with ``early_stop`` also ``live``, the rows of this run still
        iterating). Returns per sample
        the iterate to keep (see ``Kept``), its loss and whether it fools."""
        gradient, loss, outputs = self.loss_gradient(objective, adv, images, goal, 0)
        kept = Kept(adv, loss, self.fooled(objective, outputs, adv, labels))
        state = Ascent(
            images, goal, labels, adv, adv, gradient, loss, adv, gradient, loss,
            step_size=torch.full_like(loss, self.alpha),
            increases=torch.zeros_like(loss),
            halved_last=torch.ones_like(loss, dtype=torch.bool),
            best_at_last_check=loss,
        )
        live = torch.arange(len(adv), device=adv.device) if self.early_stop else None
        if live is not None:
            live, state = live[~kept.fooled], state.take(~kept.fooled)
        last_check = 0
        for step in range(self.steps):
            if live is not None and len(live) == 0:
                break
            weight = 1.0 if step == 0 else self.momentum
            ascent = per_sample(state.step_size, state.adv) * self.norm.normalise_step(state.gradient)
            proposal = self.advance(state.images, state.adv, ascent)
            momentum = weight * (proposal - state.adv) + (1 - weight) * (state.adv - state.previous_adv)
            adv = self.advance(state.images, state.adv, momentum)
            gradient, loss, outputs = self.loss_gradient(objective, adv, state.images, state.goal, step + 1)
            fooled = self.fooled(objective, outputs, adv, state.labels)
            kept = kept.put(live, kept.take(live).update(adv, loss, fooled))
            improved = loss > state.best_loss
            state = state._replace(
                adv=adv,
                previous_adv=state.adv,
                gradient=gradient,
                previous_loss=loss,
                increases=state.increases + (loss > state.previous_loss).to(loss.dtype),
                best_loss=torch.where(improved, loss, state.best_loss),
                best_adv=torch.where(per_sample(improved, adv), adv, state.best_adv),
                best_gradient=torch.where(per_sample(improved, adv), gradient, state.best_gradient),
            )
            if live is None:
                record(adv, loss=loss, outputs=outputs)
            else:
                record(adv, loss=loss, outputs=outputs, live=live)
            if step + 1 in self.checkpoints:
                state = self.checkpoint(state, step + 1 - last_check)
                last_check = step + 1
            if live is not None and fooled.any():
                live, state = live[~fooled], state.take(~fooled)
        return kept

    def checkpoint(self, state: Ascent, steps_since: int) -> Ascent:
        """The step-size test at a checkpoint (Sec. 3.2): halve eta and go back to the best point where fewer
        than rho of the last ``steps_since`` steps raised the loss, or where the best loss stalled unhalved."""
        oscillating = state.increases < self.rho * steps_since
        stalled = ~state.halved_last & (state.best_at_last_check >= state.best_loss)
        halve = oscillating | stalled
        back = per_sample(halve, state.adv)
        return state._replace(
            step_size=torch.where(halve, state.step_size / 2, state.step_size),
            adv=torch.where(back, state.best_adv, state.adv),
            gradient=torch.where(back, state.best_gradient, state.gradient),
            halved_last=halve,
            best_at_last_check=state.best_loss,
            increases=torch.zeros_like(state.increases),
        )


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
    goals_read_clean_outputs = True

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
