"""The gradient family: one projected-gradient loop; FGSM, BIM, PGD, MI-FGSM and the TI variants are
configurations of it (foolbox's gradient_descent_base shape).

Defaults: eps 32/255 (the exposure-attack paper's budget for its six gradient baselines); 10 steps, whose
size follows the number of steps as each method's paper sets it: PGD 2.5 eps / steps (Madry et al. 2018),
BIM 1.25 eps / steps (Kurakin et al. 2017), MI-FGSM and TI eps / steps (Dong et al. 2018 / 2019, decay 1,
15 x 15 kernel). A paper's own schedule (Ma et al. 2020: BIM 40 x eps/40, PGD 20 x eps/10) lives in
that paper suite's config (``alpha: eps/10``), not in the class defaults.
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
    check_budget,
    check_positive,
    check_steps,
)
from attacks.blackbox import require_class_logits, succeeded
from attacks.kernels import GaussianBlur
from attacks.norms import TINY, norm_by_name, per_sample
from attacks.targets import TargetMode

DEFAULT_EPS = 32 / 255
TI_KERNEL_SIZE = 15


def take(value: Any, rows: Tensor | None) -> Any:
    """The ``rows`` of a batch tensor, or the whole batch when ``rows`` is None."""
    return value if rows is None else value[rows]


def put(full: Tensor, rows: Tensor | None, part: Tensor) -> Tensor:
    """``full`` with its ``rows`` replaced by ``part``; ``part`` itself when ``rows`` is None (the whole batch)."""
    return part if rows is None else full.index_copy(0, rows, part)


class GradientAttack(Attack):
    """Iterative projected gradient ascent on ``step_loss`` (Ma et al. 2020, Eq. 4-6; Dong et al. 2018,
    Eq. 6-7; Dong et al. 2019, Eq. 8). Each step t = 0..steps-1 does:

    1. g = d step_loss(x_t) / d x_t                  (``step_loss`` is the hook subclasses override)
    2. g = W * g                                     (Gaussian smoothing, only when ``kernel_size`` is set)
    3. g = v = decay * v + g / ||g||_1               (momentum, skipped at decay 0: same step direction)
    4. delta = project(x_t - x + alpha * normalise_step(v), eps);  x_{t+1} = clamp(x + delta, 0, 1)

    ``x_0`` is the clean image, or a uniform draw from the eps-ball with ``random_start``. ``alpha``
    None means ``default_alpha(eps, steps)``. ``norm`` is "linf" (sign steps, clipping) or "l2" (unit-L2 steps, radial
    projection). ``target_mode`` (see ``attacks.targets``) makes the default loss descend towards a goal.
    ``early_stop`` (classification only, as in AutoAttack) attacks only the samples the clean images do
    not already fool and stops a sample once fooled; each step runs on the still-active samples only, whose
    clean images, iterates, goals and velocities it carries from step to step.
    """

    name = "gradient"

    def __init__(
        self,
        eps: float = DEFAULT_EPS,
        alpha: float | None = None,
        steps: int = 10,
        norm: str = "linf",
        random_start: bool = False,
        decay: float = 0.0,
        kernel_size: int | None = None,
        sigma: float | None = None,
        target_mode: str = "untargeted",
        early_stop: bool = False,
        seed: int = 0,
    ) -> None:
        super().__init__(seed=seed)
        check_budget("eps", eps, norm)
        check_steps("steps", steps)
        check_positive("decay", decay)
        if sigma is not None:
            check_positive("sigma", sigma)  # checked also without kernel_size, where it smooths nothing
        alpha = self.default_alpha(eps, steps) if alpha is None else alpha
        check_positive("alpha", alpha)
        self.eps = float(eps)
        self.alpha = float(alpha)
        self.steps = int(steps)
        self.norm = norm_by_name(norm)
        self.random_start = bool(random_start)
        self.decay = float(decay)
        self.smoothing = None if kernel_size is None else GaussianBlur(kernel_size, sigma)
        self.targets = TargetMode(target_mode)
        self.early_stop = bool(early_stop)

    def default_alpha(self, eps: float, steps: int) -> float:
        """The step size ``alpha`` None stands for: eps / steps, so the steps add up to the budget."""
        return eps / steps

    def step_loss(
        self, objective: Objective, outputs: Any, adv: Tensor, images: Tensor, target: Any, step: int
    ) -> Tensor:
        """Per-sample (B,) quantity the loop ascends at ``step``: the task loss, negated when targeted.

        ``outputs`` is ``objective.forward(adv)``; ``target`` is already resolved by the target mode;
        ``images`` are the clean images.
        """
        return self.targets.sign * objective.loss(outputs, target)

    def loss_gradient(
        self, objective: Objective, adv: Tensor, images: Tensor, target: Any, step: int
    ) -> tuple[Tensor, Tensor, Any]:
        """Gradient of the summed ``step_loss`` w.r.t. the input only, the per-sample loss (detached) and
        the model outputs at ``adv``."""
        adv = adv.detach().requires_grad_(True)
        outputs = objective.forward(adv)
        loss = self.step_loss(objective, outputs, adv, images, target, step)
        (gradient,) = torch.autograd.grad(loss.sum(), adv)
        return gradient, loss.detach(), outputs

    def tracked_loss(self, objective: Objective, outputs: Any, step_loss: Tensor, goal: Any) -> Tensor:
        """The per-sample loss the trace records (``AttackTrace.losses``): ``step_loss`` itself, which every
        step computes the same way; an attack whose ``step_loss`` changes form across steps overrides this."""
        return step_loss

    def initial_point(self, images: Tensor, random: SampleRandom) -> Tensor:
        """The clean images, or with ``random_start`` a uniform draw from the eps-ball around them."""
        if not self.random_start:
            return images.clone()
        return (images + self.norm.random_start(images, self.eps, random)).clamp(0.0, 1.0)

    def start(
        self, objective: Objective, images: Tensor, goal: Any, random: SampleRandom
    ) -> tuple[Tensor, Tensor | None]:
        """``x_0`` and, with ``early_stop``, the (B,) mask of samples still to attack (None without).

        A random start is kept only for the samples the clean images do not already fool, which a clean
        forward pass finds unless the caller promises there are none (``clean_unfooled``); without a random
        start, x_0 is the clean batch and the first step's forward pass finds them.
        """
        adv = self.initial_point(images, random)
        if not self.early_stop:
            return adv, None
        if not self.random_start or self.clean_unfooled:
            return adv, torch.ones(len(images), dtype=torch.bool, device=images.device)
        with torch.no_grad():
            active = self.not_fooled(objective, objective.forward(images), goal)
        return torch.where(per_sample(active, adv), adv, images), active

    def not_fooled(self, objective: Objective, outputs: Any, goal: Tensor) -> Tensor:
        """(N,) bool: the samples whose ``outputs`` do not reach the attack's goal yet."""
        logits = require_class_logits(objective.logits(outputs).detach(), "early_stop")
        return ~succeeded(logits, goal, self.targets.targeted)

    def direction(self, gradient: Tensor, velocity: Tensor) -> Tensor:
        """Steps 2-3: the gradient smoothed by W, then with momentum the new velocity; the step direction."""
        if self.smoothing is not None:
            gradient = self.smoothing(gradient)
        if not self.decay:
            return gradient
        l1 = gradient.abs().flatten(1).sum(dim=1).clamp_min(TINY)
        return self.decay * velocity + gradient / per_sample(l1, gradient)

    def advance(self, images: Tensor, adv: Tensor, update: Tensor) -> Tensor:
        """``adv + update`` projected onto the eps-ball around ``images``, then onto [0, 1]."""
        delta = self.norm.project(adv - images + update, self.eps)
        return (images + delta).clamp(0.0, 1.0)

    def run(self, objective: Objective, images: Tensor, target: Any, random: SampleRandom) -> AttackResult:
        goal = self.targets.resolve(objective, images, target, random)
        adv, active = self.start(objective, images, goal, random)
        rows = None if active is None else active.nonzero().squeeze(1)
        clean, current, aim = take(images, rows), take(adv, rows), take(goal, rows)
        velocity = torch.zeros_like(clean)
        recorder = TraceRecorder(images)
        for step in range(self.steps):
            if rows is not None and len(rows) == 0:
                break
            gradient, loss, outputs = self.loss_gradient(objective, current, clean, aim, step)
            recorder.record_loss(self.tracked_loss(objective, outputs, loss, aim), rows)
            if rows is not None:
                keep = self.not_fooled(objective, outputs, aim)
                if not keep.all():
                    active[rows[~keep]] = False
                    rows, clean, current, aim, gradient, velocity = (
                        value[keep] for value in (rows, clean, current, aim, gradient, velocity)
                    )
            direction = self.direction(gradient, velocity)
            velocity = direction if self.decay else velocity
            current = self.advance(clean, current, self.alpha * self.norm.normalise_step(direction))
            adv = put(adv, rows, current)
            recorder.step(adv - images, active)
        return AttackResult(adv, recorder.finish(adv - images))


class FGSM(GradientAttack):
    """Fast gradient sign method: one eps step (Goodfellow et al. 2015; Ma et al. 2020, Eq. 4); with a
    random start and ``alpha`` it is the FGSM of fast adversarial training (Wong et al. 2020)."""

    name = "fgsm"
    fixed = {"steps": 1}


class BIM(GradientAttack):
    """Basic iterative method / I-FGSM, clipped to the eps-ball (Kurakin et al. 2017; Ma et al. 2020, Eq. 5).

    Kurakin et al. take steps of 1/255 for min(eps + 4, 1.25 eps) steps (eps in grey levels), so the steps
    add up to 1.25 eps: ``alpha`` None is 1.25 eps / steps. Ma et al. use 40 steps of eps / 40 (their
    suite's config).
    """

    name = "bim"

    def default_alpha(self, eps: float, steps: int) -> float:
        return 1.25 * eps / steps


class PGD(GradientAttack):
    """Projected gradient descent with a uniform random start (Madry et al. 2018; Ma et al. 2020, Eq. 6).

    ``alpha`` None is 2.5 eps / steps (Madry et al.), so from any random start the steps can reach every
    corner of the eps-ball. Ma et al. use 20 steps of eps / 10 (their suite's config).
    """

    name = "pgd"
    defaults = {"random_start": True}

    def default_alpha(self, eps: float, steps: int) -> float:
        return 2.5 * eps / steps


class MIFGSM(GradientAttack):
    """Momentum iterative FGSM: v = decay * v + g / ||g||_1, steps along sign(v) (Dong et al. 2018,
    Eq. 6-7); 10 steps of eps / 10 with decay 1 as in the paper."""

    name = "mi_fgsm"
    defaults = {"decay": 1.0}


class TIFGSM(FGSM):
    """Translation-invariant FGSM: one eps step along sign(W * g), W a centred Gaussian kernel
    (Dong et al. 2019, Eq. 8)."""

    name = "ti_fgsm"
    defaults = {"kernel_size": TI_KERNEL_SIZE}


class TIBIM(BIM):
    """Translation-invariant BIM (TI-IFGSM): BIM on the smoothed gradient W * g (Dong et al. 2019, Eq. 8)."""

    name = "ti_bim"
    defaults = {"kernel_size": TI_KERNEL_SIZE}


class TIMIFGSM(MIFGSM):
    """Translation-invariant MI-FGSM: momentum over the smoothed gradient W * g (Dong et al. 2019, Eq. 8)."""

    name = "ti_mi_fgsm"
    defaults = {"kernel_size": TI_KERNEL_SIZE}
