"""Adversarial training, one option of every task module: PGD-AT, TRADES and fast AT against the module's
objective, so the classifier and the U-Net share it (``TaskModule(adversarial_training=...)``)."""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from torch import Tensor

from attacks.base import check_positive, check_steps, sample_seed
from attacks.budgets import parse_budget, scaled_by_budget
from attacks.divergence import KLDivergencePGD
from attacks.gradient import FGSM, PGD, GradientAttack
from lightning_modules.objectives import kl_divergence

if TYPE_CHECKING:
    from lightning_modules.task_module import TaskModule

METHODS = ("pgd", "trades", "fast")
FAST_STEP = 1.25  # Wong et al. 2020: the FGSM step of fast AT is 1.25 eps, from a uniform start in the ball
MULTI_STEP_ATTACKS: dict[str, type[GradientAttack]] = {"pgd": PGD, "trades": KLDivergencePGD}


@dataclass
class AdversarialLoss:
    """One training batch: the loss to minimise, the module's outputs on the adversarial images (for the
    train metrics) and those images."""

    loss: Tensor
    outputs: Any
    adv_images: Tensor


class AdversarialTraining:
    """min_theta E max_{||x' - x|| <= eps} of a training loss, the inner maximum found by an attack from
    ``attacks`` against ``module.objective()`` (for a U-Net: the mean per-pixel cross entropy).

    - ``pgd`` (Madry et al. 2018, Eq. 2.1): the module's training loss at x' = PGD(x, y) (uniform start,
      ``steps`` steps of ``alpha``, default 2.5 eps / steps).
    - ``trades`` (Zhang et al. 2019, Eq. 5): loss(f(x), y) + ``beta`` * KL(f(x) || f(x')), x' maximising
      the KL by PGD from x + 0.001 N(0, I) (``attacks.KLDivergencePGD``); the KL term's gradient flows
      through f(x) and f(x'), as in the paper's code.
    - ``fast`` (Wong et al. 2020, Alg. 3): the training loss at x' = FGSM from a uniform start in the
      ball with a step of ``alpha`` (default 1.25 eps); ``steps`` is not used.

    ``eps`` is a budget (a number or ``8/255``); ``alpha`` a number, a fraction or relative to eps
    (``eps/4``), None for the method's default. ``warmup_epochs`` k trains epoch e at eps * min(1, e / k).
    The attack runs through ``Attack.__call__``, i.e. in eval mode (BatchNorm on running statistics, no
    dropout) with parameters frozen, and leaves the module in train mode with its flags restored: an attack
    in train mode would update BatchNorm's running statistics at each of its steps with perturbed batches.
    Its seed follows the global step, so every step draws new random starts, reproducibly.
    """

    def __init__(
        self,
        method: str = "pgd",
        eps: float | str = 8 / 255,
        alpha: float | str | None = None,
        steps: int = 10,
        beta: float = 6.0,
        norm: str = "linf",
        warmup_epochs: int = 0,
        seed: int = 0,
    ) -> None:
        if method not in METHODS:
            raise ValueError(f"adversarial_training.method must be one of {METHODS}, got {method!r}")
        budget = parse_budget(eps, "adversarial_training.eps")
        if budget is None:
            raise ValueError(f"adversarial_training.eps must be a budget such as 8/255, got {eps!r}")
        check_positive("beta", beta)
        check_steps("warmup_epochs", warmup_epochs, minimum=0)
        self.method = method
        self.eps = budget
        self.alpha = alpha
        self.steps = steps
        self.beta = float(beta)
        self.norm = norm
        self.warmup_epochs = int(warmup_epochs)
        self.seed = seed
        self.attack(self.eps, seed)  # the attack checks alpha, steps, norm and seed here, not at the first step

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any]) -> AdversarialTraining:
        """The option from a config mapping (``init_args: {adversarial_training: {method: trades}}``)."""
        known = inspect.signature(cls).parameters
        unknown = sorted(set(settings) - set(known))
        if unknown:
            raise ValueError(f"adversarial_training: unknown settings {unknown}; known: {sorted(known)}")
        return cls(**settings)

    def budget(self, epoch: int) -> float:
        """eps at ``epoch`` (from 0): eps * min(1, epoch / warmup_epochs), eps throughout without warm-up."""
        return self.eps * min(1.0, epoch / self.warmup_epochs) if self.warmup_epochs else self.eps

    def step_size(self, eps: float) -> float | None:
        """``alpha`` at budget ``eps``; None leaves the attack's default."""
        if self.alpha is None:
            return None
        if isinstance(self.alpha, str) and "eps" in self.alpha:
            return scaled_by_budget(self.alpha, eps, "adversarial_training.alpha")
        alpha = parse_budget(self.alpha, "adversarial_training.alpha")
        if alpha is None:
            raise ValueError(f"adversarial_training.alpha must be a step size, got {self.alpha!r}")
        return alpha

    def attack(self, eps: float, seed: int) -> GradientAttack:
        """The inner maximisation at budget ``eps``."""
        alpha = self.step_size(eps)
        if self.method == "fast":
            step = FAST_STEP * eps if alpha is None else alpha
            return FGSM(eps=eps, alpha=step, norm=self.norm, random_start=True, seed=seed)
        return MULTI_STEP_ATTACKS[self.method](eps=eps, alpha=alpha, steps=self.steps, norm=self.norm, seed=seed)

    def training_loss(
        self, module: TaskModule, images: Tensor, targets: Any, ids: Sequence[str] | None = None
    ) -> AdversarialLoss:
        """The loss of one training batch of ``module`` (in train mode), at the budget of its current epoch."""
        eps = self.budget(module.current_epoch)
        objective = module.objective()
        if eps == 0:  # the first warm-up epoch: clean training, without attack steps that cannot move
            adv = images
        else:
            attack = self.attack(eps, sample_seed(self.seed, f"step{module.global_step}"))
            adv = attack(objective, images, targets, ids=ids).adv_images
        if self.method != "trades":
            outputs = module(adv)
            return AdversarialLoss(module.task_loss(outputs, targets), outputs, adv)
        clean = module(images)
        outputs = module(adv)
        robust = kl_divergence(objective.logits(clean), objective.logits(outputs)).mean()
        return AdversarialLoss(module.task_loss(clean, targets) + self.beta * robust, outputs, adv)
