"""One-pixel attack (Su et al. 2019): differential evolution over a few (row, column, colour) changes."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from attacks.base import Attack, AttackResult, Objective, SampleRandom, TraceRecorder, check_positive, check_steps
from attacks.blackbox import class_logits, goal_queries, succeeded
from attacks.targets import TargetMode


def paint_pixels(images: Tensor, genes: Tensor) -> Tensor:
    """Copies of ``images`` (N, C, H, W) with the pixels of ``genes`` (N, d, 2 + C) = (row, column,
    colour per channel) painted; a later pixel overwrites an earlier one at the same place."""
    count, channels, height, width = images.shape
    flat = images.reshape(count, channels, height * width).clone()
    rows = torch.arange(count, device=images.device)[:, None]
    channel_index = torch.arange(channels, device=images.device)[None, :]
    position = (genes[..., 0] * width + genes[..., 1]).long()
    for pixel in range(genes.shape[1]):
        flat[rows, channel_index, position[:, pixel, None]] = genes[:, pixel, 2:]
    return flat.view_as(images)


class OnePixelAttack(Attack):
    """One-pixel attack (Su et al. 2019, Eq. 2: ||e(x)||_0 <= d) by differential evolution: DE/rand/1,
    child x_r1 + F (x_r2 - x_r3) with F = 0.5 and no crossover, a child replacing its parent when fitter.

    Each sample evolves its own population of candidates of ``pixels`` (row, column, colour) genes.
    Fitness: the true-class probability (untargeted) or the goal-class probability (targeted
    ``target_mode``). Initial genes and the r1, r2, r3 draws are shared by the batch, so a sample's result
    does not depend on its batch; with ``ids`` each sample draws its own. Positions stay integers, colours
    in [0, 1]; a sample stops once fooled.
    """

    name = "one_pixel"
    access = "black-box"

    def __init__(
        self,
        pixels: int = 1,
        population: int = 400,
        iterations: int = 100,
        mutation: float = 0.5,
        target_mode: str = "untargeted",
        chunk_size: int = 1024,
        seed: int = 0,
    ) -> None:
        super().__init__(seed)
        check_steps("pixels", pixels)
        check_steps("population", population)
        if population < 4:
            raise ValueError(f"population must be >= 4 (DE/rand/1 draws three partners), got {population!r}")
        check_steps("iterations", iterations)
        check_positive("mutation", mutation, allow_zero=False)
        check_steps("chunk_size", chunk_size)
        self.pixels = int(pixels)
        self.population = int(population)
        self.iterations = int(iterations)
        self.mutation = mutation
        self.targets = TargetMode(target_mode)
        self.chunk_size = int(chunk_size)

    def run(
        self, objective: Objective, images: Tensor, target: Any, random: SampleRandom
    ) -> AttackResult:
        batch, channels, height, width = images.shape
        bounds = [height - 1, width - 1] + [1] * channels
        upper = torch.tensor(bounds, dtype=images.dtype, device=images.device)
        recorder = TraceRecorder(images)
        goal = self.targets.resolve(objective, images, target, random)
        recorder.add_queries(goal_queries(self.targets))
        genes = self._initial_genes(channels, upper, random).expand(batch, -1, -1, -1).clone()
        active = torch.ones(batch, dtype=torch.bool, device=images.device)
        fitness, fooled = self._evaluate(objective, images, genes, goal, active, recorder)
        best = self._fittest(images, genes, fitness, fooled)
        recorder.step(best - images)
        active = ~fooled.any(dim=1)
        for _ in range(self.iterations):
            if not active.any():
                break
            children = self._mutate(genes, upper, random)
            child_fitness, child_fooled = self._evaluate(objective, images, children, goal, active, recorder)
            replace = (child_fitness < fitness) & active[:, None]
            genes = torch.where(replace[..., None, None], children, genes)
            fitness = torch.where(replace, child_fitness, fitness)
            fooled = torch.where(replace, child_fooled, fooled)
            best = self._fittest(images, genes, fitness, fooled)
            recorder.step(best - images, active)
            active = active & ~fooled.any(dim=1)
        extras = {"goal": goal} if self.targets.targeted else {}
        return AttackResult(best, recorder.finish(best - images), extras)

    def _initial_genes(self, channels: int, upper: Tensor, random: SampleRandom) -> Tensor:
        """(1, P, d, 2 + C), or with ids (B, P, d, 2 + C): positions uniform over the image, colours
        N(0.5, 0.5) clipped to [0, 1] (the paper's N(128, 127) on 8 bits)."""
        shape = (self.population, self.pixels)
        positions = random.shared(torch.rand, (*shape, 2), dtype=upper.dtype) * (upper[:2] + 1)
        colours = 0.5 + 0.5 * random.shared(torch.randn, (*shape, channels), dtype=upper.dtype)
        return self._bounded(torch.cat([positions.floor(), colours], dim=-1), upper)

    def _bounded(self, genes: Tensor, upper: Tensor) -> Tensor:
        """Clip every gene to its range and round the positions to pixel indices."""
        genes = torch.minimum(genes.clamp_min(0), upper)
        return torch.cat([genes[..., :2].round(), genes[..., 2:]], dim=-1)

    def _mutate(self, genes: Tensor, upper: Tensor, random: SampleRandom) -> Tensor:
        """DE/rand/1: x_r1 + F (x_r2 - x_r3), r1, r2, r3 distinct and different from the parent."""
        keys = random.shared(torch.rand, (self.population, self.population))
        parent = torch.eye(self.population, dtype=torch.bool, device=genes.device)
        r1, r2, r3 = keys.masked_fill(parent, 2.0).argsort(dim=2)[..., :3].unbind(dim=2)
        samples = torch.arange(len(genes), device=genes.device)[:, None]
        x1, x2, x3 = (genes[samples, r] for r in (r1, r2, r3))
        return self._bounded(x1 + self.mutation * (x2 - x3), upper)

    def _evaluate(
        self,
        objective: Objective,
        images: Tensor,
        genes: Tensor,
        goal: Tensor,
        active: Tensor,
        recorder: TraceRecorder,
    ) -> tuple[Tensor, Tensor]:
        """Fitness (B, P) to minimise (true-class probability, or 1 - goal probability) and success
        (B, P), querying the model for the active samples in chunks of ``chunk_size`` images."""
        batch = len(images)
        fitness = torch.full((batch, self.population), float("inf"), dtype=images.dtype, device=images.device)
        fooled = torch.zeros(batch, self.population, dtype=torch.bool, device=images.device)
        samples = active.nonzero().squeeze(1).repeat_interleave(self.population)
        members = torch.arange(self.population, device=images.device).repeat(int(active.sum()))
        for start in range(0, len(samples), self.chunk_size):
            sample = samples[start : start + self.chunk_size]
            member = members[start : start + self.chunk_size]
            logits = class_logits(objective, paint_pixels(images[sample], genes[sample, member]))
            probability = logits.softmax(dim=1).gather(1, goal[sample, None]).squeeze(1)
            fitness[sample, member] = 1 - probability if self.targets.targeted else probability
            fooled[sample, member] = succeeded(logits, goal[sample], self.targets.targeted)
        recorder.add_queries(active.long() * self.population)
        return fitness, fooled

    def _fittest(self, images: Tensor, genes: Tensor, fitness: Tensor, fooled: Tensor) -> Tensor:
        """Each sample painted with its fittest member, fooling members first."""
        choice = (fitness - 2.0 * fooled.float()).argmin(dim=1)
        return paint_pixels(images, genes[torch.arange(len(images), device=images.device), choice])
