"""ASMA: the Adaptive Segmentation Mask Attack (Ozbulak, Van Messem, De Neve, "Impact of Adversarial Examples on
Deep Learning Models for Biomedical Image Segmentation", MICCAI 2019): targeted at a whole adversarial mask."""

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
)
from attacks.norms import per_sample
from attacks.progress import BestIterate

TARGET_MASKS = ("other", "background", "given")


def adversarial_masks(mode: str, target: Tensor) -> Tensor:
    """The mask (B, H, W) ASMA drives each image's prediction to: ``"other"`` the next image's true mask in the
    batch (image i gets image i + 1's, the last the first's: the paper's protocol, another image's mask),
    ``"background"`` all class 0 (the structure removed), ``"given"`` the caller's ``target`` itself."""
    if mode == "background":
        return torch.zeros_like(target)
    if mode == "other":
        if len(target) < 2:
            raise ValueError(f"target_mask='other' takes another image's mask: needs >= 2 images, got {len(target)}")
        return target.roll(-1, dims=0)
    return target


def mean_iou(predicted: Tensor, goal: Tensor, classes: int) -> Tensor:
    """(B,) mean over the classes present in ``predicted`` or ``goal`` of their intersection over union."""
    onehot_predicted = torch.nn.functional.one_hot(predicted.flatten(1), classes).bool()
    onehot_goal = torch.nn.functional.one_hot(goal.flatten(1), classes).bool()
    union = (onehot_predicted | onehot_goal).sum(dim=1)
    overlap = (onehot_predicted & onehot_goal).sum(dim=1)
    present = union > 0
    return (overlap / union.clamp_min(1) * present).sum(dim=1) / present.sum(dim=1).clamp_min(1)


class ASMA(Attack):
    """ASMA (Ozbulak et al., MICCAI 2019): gradient ascent on the goal class's logit at the pixels not yet
    predicted as the goal mask Y^A (Eq. 2), minus ||x - x_0||_2^2, with the step multiplier
    tau_n = beta IoU(Y^A, prediction_n) + tau growing with the overlap. With ``stop_at_goal`` (the paper) each
    image stops once ``matched_pixels`` of its pixels match Y^A; without, it takes every step and the smallest
    matching iterate is kept (the L2 term keeps shrinking the perturbation: how adv-lib runs ASMA).

    Logits are taken centred, z_c - mean_k z_k: a pixel's logits are defined up to a shared constant, and the
    binary objective's [0, z] leaves the background logit constant, so the raw Eq. 2 could never turn a pixel to
    background. ``target_mask`` sets Y^A (see ``adversarial_masks``; the goal is in ``extras["goal"]``). The L2
    norm of the returned perturbation is in ``extras["norms"]`` (0: the clean prediction already matches,
    returned unchanged; inf: never reached, the iterate matching most pixels is returned). Segmentation only.
    """

    name = "asma"

    def __init__(
        self,
        target_mask: str = "background",
        steps: int = 1000,
        tau: float = 1e-7,
        beta: float = 1e-6,
        matched_pixels: float = 0.99,
        stop_at_goal: bool = True,
        seed: int = 0,
    ) -> None:
        super().__init__(seed)
        if target_mask not in TARGET_MASKS:
            raise ValueError(f"target_mask must be one of {TARGET_MASKS}, got {target_mask!r}")
        check_steps("steps", steps)
        check_positive("tau", tau, allow_zero=False)
        check_positive("beta", beta)
        check_fraction("matched_pixels", matched_pixels)
        self.target_mask = target_mask
        self.steps = int(steps)
        self.tau = float(tau)
        self.beta = float(beta)
        self.matched_pixels = float(matched_pixels)
        self.stop_at_goal = bool(stop_at_goal)

    def run(self, objective: Objective, images: Tensor, target: Any, random: SampleRandom) -> AttackResult:
        goal = adversarial_masks(self.target_mask, target.long())
        adv = images.clone()
        active = torch.ones(len(images), dtype=torch.bool, device=images.device)
        best = BestIterate(images)
        recorder = TraceRecorder(images)
        for step in range(self.steps + 1):
            x = adv.clone().requires_grad_(True)
            outputs = objective.forward(x)
            logits = objective.logits(outputs)
            if logits.dim() != 4:
                raise ValueError(f"ASMA needs segmentation logits (B, K, H, W), got shape {tuple(logits.shape)}")
            predicted = logits.detach().argmax(dim=1)
            matched = (predicted == goal).flatten(1).float().mean(dim=1)
            reached = matched >= self.matched_pixels
            best.update(adv, (adv - images).flatten(1).norm(dim=1), matched, reached)
            active &= ~reached if self.stop_at_goal else best.norms > 0
            if step == self.steps or not active.any():
                break
            centred = logits - logits.mean(dim=1, keepdim=True)
            missed = (predicted != goal) & active.view(-1, 1, 1)
            pull = (centred.gather(1, goal.unsqueeze(1)).squeeze(1) * missed).flatten(1).sum(dim=1)
            distance = (x - images).flatten(1).square().sum(dim=1)
            (gradient,) = torch.autograd.grad((pull - distance).sum(), x)
            rows = active.nonzero().squeeze(1)
            recorder.record_loss(-objective.loss(outputs, goal).detach()[rows], rows)
            multiplier = self.beta * mean_iou(predicted, goal, logits.shape[1]) + self.tau
            stepped = (adv + per_sample(multiplier, adv) * gradient).clamp(0.0, 1.0)
            adv = torch.where(per_sample(active, adv), stepped, adv)
            recorder.step(adv - images, active)
        return AttackResult(best.adv, recorder.finish(best.adv - images), {"norms": best.norms, "goal": goal})
