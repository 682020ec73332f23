"""DeepFool: the smallest L2 step to the nearest linearised decision boundary, repeated until fooled."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from attacks.base import Attack, AttackResult, Objective, SampleRandom, TraceRecorder, check_positive, check_steps
from attacks.norms import TINY, per_sample

BOUNDARY_NUDGE = 1e-4


class DeepFool(Attack):
    """DeepFool, multi-class L2 (Moosavi-Dezfooli et al. 2016, Algorithm 2).

    Per iteration, for the candidate classes k (the ``candidates`` highest clean logits) it linearises
    f_k - f_orig with w_k = grad(f_k - f_orig), steps to the nearest boundary
    r = (|f_l - f_orig| / ||w_l||_2 + 1e-4) w_l / ||w_l||_2, and accumulates r;
    x_adv = clamp(x + (1 + overshoot) * sum r). Batched over samples, looping over classes only; samples
    already fooled stop updating, and samples the clean model already misclassifies (prediction != target)
    are returned unchanged, as in the reference implementations: an untargeted attack never repairs a
    sample. Classification objectives only (logits (B, K)).
    """

    name = "deepfool"

    def __init__(self, steps: int = 50, overshoot: float = 0.02, candidates: int = 10, seed: int = 0) -> None:
        super().__init__(seed=seed)
        check_steps("steps", steps)
        check_positive("overshoot", overshoot)
        check_steps("candidates", candidates)
        if candidates < 2:
            raise ValueError(f"candidates must be >= 2 (the original class and one other), got {candidates!r}")
        self.steps = int(steps)
        self.overshoot = float(overshoot)
        self.candidates = int(candidates)

    def run(self, objective: Objective, images: Tensor, target: Any, random: SampleRandom) -> AttackResult:
        with torch.no_grad():
            clean_logits = objective.logits(objective.forward(images))
        if clean_logits.dim() != 2:
            raise ValueError(f"DeepFool needs classification logits (B, K), got shape {tuple(clean_logits.shape)}")
        classes = clean_logits.topk(min(self.candidates, clean_logits.shape[1]), dim=1).indices
        total_step = torch.zeros_like(images)
        adv = images.clone()
        active = classes[:, 0] == target
        recorder = TraceRecorder(images)
        for _ in range(self.steps):
            if not active.any():
                break
            index = active.nonzero().squeeze(1)
            step, fooled = self.boundary_step(objective, adv[index], classes[index])
            active[index[fooled]] = False
            update = torch.zeros_like(images).index_copy_(0, index, step)
            total_step = total_step + update * per_sample(active, update)
            adv = (images + (1 + self.overshoot) * total_step).clamp(0.0, 1.0)
            recorder.step(adv - images, active)
        return AttackResult(adv, recorder.finish(adv - images))

    @staticmethod
    def boundary_step(objective: Objective, adv: Tensor, classes: Tensor) -> tuple[Tensor, Tensor]:
        """The step to the nearest linearised boundary among ``classes`` (column 0 is the original class),
        and whether each sample is already fooled (its arg-max is no longer the original class)."""
        x = adv.detach().requires_grad_(True)
        logits = objective.logits(objective.forward(x))
        fooled = logits.argmax(dim=1) != classes[:, 0]
        if fooled.all():
            return torch.zeros_like(x), fooled
        direction, _, distance = nearest_linear_boundary(logits, x, classes[:, 0], classes[:, 1:], dual=2.0)
        unit = direction / per_sample(direction.flatten(1).norm(dim=1).clamp_min(TINY), x)
        return per_sample(distance + BOUNDARY_NUDGE, unit) * unit, fooled


def nearest_linear_boundary(
    logits: Tensor, x: Tensor, labels: Tensor, others: Tensor, dual: float
) -> tuple[Tensor, Tensor, Tensor]:
    """The closest linearised decision boundary of ``labels`` among the classes ``others`` (B, M): the
    normal w = grad(f_s - f_label), the gap f_s - f_label and the distance |f_s - f_label| / ||w||_dual of
    the class s minimising that distance (DeepFool, Moosavi-Dezfooli et al. 2016, Eq. 12; FAB's pi_s).

    ``logits`` (B, K) must hold the graph to ``x``; one backward pass per column of ``others``.
    """
    true = logits.gather(1, labels.unsqueeze(1)).squeeze(1)
    best_distance = torch.full_like(true, float("inf"))
    best_normal, best_gap = torch.zeros_like(x), torch.zeros_like(true)
    columns = others.shape[1]
    for k in range(columns):
        gap = logits.gather(1, others[:, k : k + 1]).squeeze(1) - true
        (normal,) = torch.autograd.grad(gap.sum(), x, retain_graph=k < columns - 1)
        gap = gap.detach()
        distance = gap.abs() / normal.flatten(1).norm(p=dual, dim=1).clamp_min(TINY)
        closer = distance < best_distance
        best_distance = torch.where(closer, distance, best_distance)
        best_gap = torch.where(closer, gap, best_gap)
        best_normal = torch.where(per_sample(closer, normal), normal, best_normal)
    return best_normal, best_gap, best_distance
