"""Square Attack (Andriushchenko et al. 2020): score-based random search with square-shaped updates, Linf."""

from __future__ import annotations

import math
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from attacks.base import (
    Attack,
    AttackResult,
    Objective,
    SampleRandom,
    TraceRecorder,
    check_budget,
    check_fraction,
    check_steps,
)
from attacks.blackbox import class_logits, goal_queries, succeeded
from attacks.cw import class_margin
from attacks.targets import TargetMode

# iterations (out of 10000) after which the square's area fraction p halves (the paper's schedule)
HALVINGS = (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)
# draws of the per-channel signs before giving up on a square that would leave its window unchanged
SIGN_DRAWS = 10


def p_schedule(p_init: float, iteration: int, total: int) -> float:
    """Fraction of pixels the square covers at ``iteration`` of ``total``, rescaled to 10000 iterations."""
    scaled = int(iteration / total * 10000)
    return p_init / 2 ** sum(scaled > halving for halving in HALVINGS)


def square_side(p: float, height: int, width: int) -> int:
    """Side of a square covering about ``p`` of the image, at least 1 and smaller than the image."""
    return max(1, min(int(round(math.sqrt(p * height * width))), min(height, width) - 1))


def random_signs(random: SampleRandom, shape: tuple[int, ...]) -> Tensor:
    """Uniform +-1 entries of ``shape``, shared by the batch (1, *shape) or with ids per sample (B, *shape)."""
    return random.shared(partial(torch.randint, 0, 2), shape).float() * 2 - 1


def square_window(top: Tensor, left: Tensor, side: int, like: Tensor) -> tuple[Tensor, ...]:
    """Advanced index of the side x side squares at (``top``, ``left``) ((1,) or (B,) each) in every image and
    channel of ``like`` (B, C, H, W): ``like[window]`` is (B, C, side, side)."""
    offsets = torch.arange(side, device=like.device)
    samples = torch.arange(like.shape[0], device=like.device).view(-1, 1, 1, 1)
    channels = torch.arange(like.shape[1], device=like.device).view(1, -1, 1, 1)
    rows = (top[:, None] + offsets).view(-1, 1, side, 1)
    columns = (left[:, None] + offsets).view(-1, 1, 1, side)
    return samples, channels, rows, columns


class SquareAttack(Attack):
    """Square Attack, Linf (Andriushchenko et al. 2020, Alg. 1 with the Linf proposal distribution, Alg. 2).

    Vertical-stripe initialisation, then squares of side sqrt(p h w) (p halving on the paper's schedule)
    reset to x + eps * (+-1 per channel); a proposal is kept when it lowers the sample's loss: the margin
    loss (untargeted) or the cross entropy to the goal class (targeted ``target_mode``, as in the paper).
    A sample stops once fooled. Proposals (square position, signs) are shared by the batch and accepted
    per sample, so a sample's result does not depend on its batch; with ``ids`` each sample draws its own.
    ``max_queries`` bounds the model queries per sample, the clean check included.
    """

    name = "square"
    access = "black-box"

    def __init__(
        self,
        eps: float,
        max_queries: int = 10000,
        p_init: float = 0.05,
        target_mode: str = "untargeted",
        seed: int = 0,
    ) -> None:
        super().__init__(seed)
        check_budget("eps", eps, "linf")
        check_steps("max_queries", max_queries, minimum=2)  # the clean check and the start
        check_fraction("p_init", p_init)
        self.eps = eps
        self.max_queries = int(max_queries)
        self.p_init = p_init
        self.targets = TargetMode(target_mode)

    def _loss(self, logits: Tensor, goal: Tensor) -> Tensor:
        if self.targets.targeted:
            return F.cross_entropy(logits, goal, reduction="none")
        return class_margin(logits, goal)

    def run(
        self, objective: Objective, images: Tensor, target: Any, random: SampleRandom
    ) -> AttackResult:
        """Alg. 1 on the samples not done yet: each iteration proposes, queries and accepts for those rows only
        (the others' draws are not made: with ``ids`` every sample has its own generator)."""
        batch, channels, height, width = images.shape
        recorder = TraceRecorder(images)
        goal = self.targets.resolve(objective, images, target, random)
        done = self._clean_done(objective, images, goal)
        recorder.add_queries(1 + goal_queries(self.targets))
        best = images.clone()
        loss = torch.full((batch,), float("inf"), dtype=images.dtype, device=images.device)
        stripes = self.eps * random_signs(random, (channels, 1, width))
        rows = (~done).nonzero().squeeze(1)
        self._accept(objective, images, (images + stripes).clamp(0, 1)[rows], rows, goal, best, loss, done, recorder)
        for iteration in range(self.max_queries - 2):
            rows = (~done).nonzero().squeeze(1)
            if len(rows) == 0:
                break
            side = square_side(p_schedule(self.p_init, iteration, self.max_queries), height, width)
            candidates = self._propose(images[rows], best[rows], side, random.subset(rows))
            self._accept(objective, images, candidates, rows, goal, best, loss, done, recorder)
        extras = {"goal": goal} if self.targets.targeted else {}
        return AttackResult(best, recorder.finish(best - images), extras)

    def _clean_done(self, objective: Objective, images: Tensor, goal: Tensor) -> Tensor:
        """(B,) bool: the samples whose clean images already reach the goal (one query, counted as the attack's
        also where the caller made it and promises none, ``clean_unfooled``)."""
        if self.clean_unfooled:
            return torch.zeros(len(images), dtype=torch.bool, device=images.device)
        return succeeded(class_logits(objective, images), goal, self.targets.targeted)

    def _propose(self, images: Tensor, candidates: Tensor, side: int, random: SampleRandom) -> Tensor:
        """``candidates`` (a copy of the samples' best points, written in place) with one square window reset
        to clean + eps * s, s the first drawn sign pattern that changes the window (the paper's resampling
        loop, at most SIGN_DRAWS draws)."""
        height, width = images.shape[2:]
        top = random.shared(partial(torch.randint, 0, height - side + 1), ())
        left = random.shared(partial(torch.randint, 0, width - side + 1), ())
        signs = self.eps * random_signs(random, (SIGN_DRAWS, images.shape[1]))
        window = square_window(top, left, side, images)
        proposals = (images[window][:, None] + signs[:, :, :, None, None]).clamp(0, 1)
        changed = ((proposals - candidates[window][:, None]).abs() > 1e-7).flatten(2).any(dim=2)
        first_change = changed.int().argmax(dim=1)
        candidates[window] = proposals[torch.arange(len(images), device=images.device), first_change]
        return candidates

    def _accept(
        self,
        objective: Objective,
        images: Tensor,
        candidates: Tensor,
        rows: Tensor,
        goal: Tensor,
        best: Tensor,
        loss: Tensor,
        done: Tensor,
        recorder: TraceRecorder,
    ) -> None:
        """Query the ``candidates`` of the samples ``rows`` (those not done) and keep those that lower the loss,
        updating ``best``, ``loss`` and ``done`` in place."""
        if len(rows) == 0:
            return
        active = ~done
        logits = class_logits(objective, candidates)
        new_loss = self._loss(logits, goal[rows])
        improved = new_loss < loss[rows]
        chosen = rows[improved]
        best[chosen] = candidates[improved]
        loss[chosen] = new_loss[improved]
        done[chosen] = succeeded(logits[improved], goal[chosen], self.targets.targeted)
        recorder.add_queries(active.long())
        recorder.step(best - images, active)
