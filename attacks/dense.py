"""Dense Adversary Generation (Xie et al., "Adversarial Examples for Semantic Segmentation and Object
Detection", ICCV 2017, Sec. 3.1-3.2, Algorithm 1)."""

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
from attacks.norms import norm_by_name

LABEL_MAPPINGS = ("permutation", "next")


def adversarial_class_maps(classes: int, mapping: str, random: SampleRandom) -> Tensor:
    """(B, K) class -> adversarial class, never the class itself.

    ``"next"`` maps c to c + 1 mod K; ``"permutation"`` draws per sample a random K-cycle (a random
    permutation with no fixed point, so distinct classes get distinct adversarial labels).
    """
    identity = torch.arange(classes, device=random.device).expand(random.batch, classes)
    if mapping == "next":
        return (identity + 1) % classes
    order = random.each(lambda generator, device: torch.randperm(classes, generator=generator, device=device))
    maps = torch.empty_like(order)
    maps.scatter_(1, order, order.roll(-1, dims=1))
    return maps


def position_scores(objective: Objective, outputs: Any, target: Any) -> tuple[Tensor, Tensor]:
    """Logits as (B, K, P) and true labels as (B, P) over every position (one for classification)."""
    logits = objective.logits(outputs)
    labels = objective.dense_target(outputs, target)
    return logits.flatten(2) if logits.dim() > 2 else logits.unsqueeze(2), labels.reshape(len(labels), -1)


class DenseAdversaryGeneration(Attack):
    """DAG (Xie et al. 2017, Algorithm 1): at every still-correct position raise the adversarial
    label's logit over the true one; step r = gamma * grad / ||grad||_inf per image, until no
    position is correct or ``max_iter``.

    ``gamma`` defaults to the paper's 0.5 on its 0-255 pixel scale (0.5 / 255 here); ``eps``
    optionally bounds the accumulated perturbation in ``norm`` (a threat model of ``attacks.norms``) so
    DAG can be compared at a budget.
    Positions whose label lies outside [0, K) (e.g. ignored proposals) are never targets.
    """

    name = "dag"

    def __init__(
        self,
        gamma: float = 0.5 / 255,
        max_iter: int = 200,
        label_mapping: str = "permutation",
        eps: float | None = None,
        norm: str = "linf",
        seed: int = 0,
    ) -> None:
        super().__init__(seed)
        check_positive("gamma", gamma, allow_zero=False)
        check_steps("max_iter", max_iter)
        if label_mapping not in LABEL_MAPPINGS:
            raise ValueError(f"label_mapping must be one of {LABEL_MAPPINGS}, got {label_mapping!r}")
        if eps is not None:
            check_budget("eps", eps, norm)
        self.gamma = float(gamma)
        self.max_iter = int(max_iter)
        self.label_mapping = label_mapping
        self.eps = None if eps is None else float(eps)
        self.norm = norm_by_name(norm)

    def run(
        self, objective: Objective, images: Tensor, target: Any, random: SampleRandom
    ) -> AttackResult:
        recorder = TraceRecorder(images)
        adv = images.clone()
        class_maps: Tensor | None = None
        for _ in range(self.max_iter):
            x = adv.clone().requires_grad_(True)
            logits, labels = position_scores(objective, objective.forward(x), target)
            if class_maps is None:
                class_maps = adversarial_class_maps(logits.shape[1], self.label_mapping, random)
            valid = (labels >= 0) & (labels < logits.shape[1])
            labels = labels.clamp(0, logits.shape[1] - 1)
            active = valid & (logits.argmax(dim=1) == labels)
            if not active.any():
                break
            adversarial = class_maps.gather(1, labels)
            gap = logits.gather(1, adversarial.unsqueeze(1)) - logits.gather(1, labels.unsqueeze(1))
            (gradient,) = torch.autograd.grad((gap.squeeze(1) * active).sum(), x)
            scale = gradient.flatten(1).abs().amax(dim=1).view(-1, *[1] * (images.dim() - 1))
            step = torch.where(scale > 0, self.gamma * gradient / scale, torch.zeros_like(gradient))
            perturbation = adv.detach() + step - images
            if self.eps is not None:
                perturbation = self.norm.project(perturbation, self.eps)
            adv = (images + perturbation).clamp(0.0, 1.0)
            recorder.step(adv - images, active=active.any(dim=1))
        return AttackResult(adv, recorder.finish(adv - images))
