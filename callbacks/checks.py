"""Attack-failure checks: cheap signs that an evaluation may overestimate robustness (Carlini et al. 2019,
"On evaluating adversarial robustness"; Pintor et al. 2022, "Indicators of attack failure"; the checks of
Croce & Hein's AutoAttack).

Per cell, ``ModelEvidence``, ``GradientEvidence`` and ``LossEvidence`` gather numbers during the evaluation,
stored as ``check/{name}`` metrics (``unbounded_not_broken`` is the accuracy an unbounded attack left);
across the cells of one model, ``cross_checks`` compares attacks and budgets. ``verdicts`` turns the
stored numbers into "pass" or "warn: reason", wherever they are shown (callback warnings, report, W&B).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from torchmetrics import Metric

from attacks.adaptive import AdaptiveAttack
from attacks.autoattack import AutoAttack
from attacks.base import Attack, AttackTrace, Objective, input_gradient
from attacks.budgets import budget_value

TINY_GRADIENT = 1e-12  # largest |gradient| entry below which a sample's input gradient counts as vanished
RANDOM_TOLERANCE = 1e-5  # relative difference of two forward passes above which the model is random
PROBABILITY_TOLERANCE = 1e-3
LOSS_STALL_FRACTION = 0.5
VANISHING_FRACTION = 0.1
UNBOUNDED_ACCURACY = 0.05
ORDER_TOLERANCE = 0.02  # accuracy points by which a stronger setting may trail a weaker one (sampling noise)


@dataclass(frozen=True)
class Check:
    """A per-cell check: the evidence stored as ``check/{name}``, when it warns, and why."""

    name: str
    warns: Callable[[float], bool]
    reason: str  # formatted with ``value``


CHECKS = (
    Check("loss_not_increasing", lambda v: v > LOSS_STALL_FRACTION,
          "the attack loss did not increase over its iterations on {value:.0%} of the samples"),
    Check("vanishing_gradients", lambda v: v > VANISHING_FRACTION,
          "{value:.0%} of the samples have zero, NaN or tiny input gradients (gradient masking or saturation)"),
    Check("random_model", lambda v: v > 0,
          "two forward passes of the same images differ: the model is randomised; attack it with EoT"),
    Check("probability_outputs", lambda v: v > 0,
          "the model outputs probabilities (softmax), which saturate gradients: attack its logits"),
    Check("unbounded_not_broken", lambda v: v > UNBOUNDED_ACCURACY,
          "an unbounded (or minimal-norm) attack left accuracy {value:.2f} instead of about 0: it failed"),
)


def verdicts(metrics: Mapping[str, float], prefix: str = "check/") -> dict[str, str]:
    """``{check name: "pass" | "warn: reason"}`` for the checks whose evidence ``metrics`` holds."""
    found = {}
    for check in CHECKS:
        value = metrics.get(f"{prefix}{check.name}")
        if value is not None and value == value:  # NaN: no evidence
            found[check.name] = f"warn: {check.reason.format(value=value)}" if check.warns(value) else "pass"
    return found


def stalled_count(losses: Tensor) -> tuple[int, int]:
    """How many samples' last recorded loss (row of ``losses``, NaN = not recorded) is not above their
    first, and how many samples have at least two recorded losses."""
    recorded = ~losses.isnan()
    counted = recorded.sum(dim=1) >= 2
    if not counted.any():
        return 0, 0
    rows = losses[counted]
    mask = recorded[counted]
    first = rows.gather(1, mask.float().argmax(dim=1, keepdim=True)).squeeze(1)
    last_index = mask.shape[1] - 1 - mask.flip(1).float().argmax(dim=1, keepdim=True)
    last = rows.gather(1, last_index).squeeze(1)
    stalled = last <= first + 1e-6 * first.abs()
    return int(stalled.sum()), int(counted.sum())


def _sums(metric: Metric, *names: str) -> None:
    for name in names:
        metric.add_state(name, default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")


class ModelEvidence(Metric):
    """Model-level evidence from the clean batches, in sum states (DDP-exact): batches whose two forward
    passes differ and batches of probability outputs."""

    full_state_update = False

    def __init__(self) -> None:
        super().__init__()
        _sums(self, "random_batches", "probability_batches")

    def update(self, objective: Objective, images: Tensor, clean_outputs: Any) -> None:
        """One more forward pass of a clean batch, compared with its first."""
        with torch.no_grad():
            first = objective.logits(clean_outputs).float()
            second = objective.logits(objective.forward(images)).float()
        scale = first.abs().amax().clamp_min(1.0)
        self.random_batches += float((second - first).abs().amax() > RANDOM_TOLERANCE * scale)
        in_unit = bool(((first >= 0) & (first <= 1)).all())
        sums_to_one = bool(((first.sum(dim=1) - 1).abs() <= PROBABILITY_TOLERANCE).all())
        self.probability_batches += float(in_unit and sums_to_one)

    def compute(self) -> dict[str, Tensor]:
        return {
            "check/random_model": self.random_batches.float(),
            "check/probability_outputs": self.probability_batches.float(),
        }


def followed_objective(attack: Attack, objective: Objective) -> Objective:
    """The objective whose input gradient ``attack`` follows: an adaptive attack's BPDA/EOT wrapper of
    ``objective`` (``AdaptiveAttack.wrapped``), else ``objective`` itself."""
    return attack.wrapped(objective) if isinstance(attack, AdaptiveAttack) else objective


def averages_draws(attack: Attack) -> bool:
    """Whether ``attack`` already follows the expectation over a randomised model's draws (EOT: an adaptive
    attack with EOT, or an AutoAttack cascade whose every stage draws, the ``rand`` version); the
    ``random_model`` check, whose advice is EOT, does not apply to it."""
    if isinstance(attack, AdaptiveAttack):
        return "eot" in attack.method
    return isinstance(attack, AutoAttack) and all(draws > 1 for _, draws in attack.stages)


def gradient_route(attack: Attack) -> str:
    """The same name for attacks that follow the same gradient: ``model``, or an adaptive attack's method
    and draws (``bpda_eot/20``)."""
    return f"{attack.method}/{attack.draws}" if isinstance(attack, AdaptiveAttack) else "model"


def vanished(gradient: Tensor) -> Tensor:
    """(B,) whether each sample's input gradient is zero, NaN or tiny (largest entry below ``TINY_GRADIENT``)."""
    largest = gradient.flatten(1).abs().amax(dim=1)
    return ~largest.isfinite() | (largest < TINY_GRADIENT)


class GradientEvidence(Metric):
    """Per attack, the share of clean samples whose input gradient vanished, taken through the objective
    the attack follows (``followed_objective``: the model's own gradient, or an adaptive attack's BPDA/EOT
    gradient, zero by design without the wrapper); one input gradient per distinct ``gradient_route``."""

    full_state_update = False

    def __init__(self, attacks: Mapping[str, Attack]) -> None:
        super().__init__()
        self.routes = {key: gradient_route(attack) for key, attack in attacks.items()}
        self.followers = {route: attack for attack, route in zip(attacks.values(), self.routes.values(), strict=True)}
        self.add_state("vanishing", default=torch.zeros(len(self.followers), dtype=torch.float64), dist_reduce_fx="sum")
        _sums(self, "samples")

    def update(self, objective: Objective, images: Tensor, target: Any) -> None:
        """One input gradient of the task loss on a clean batch per route."""
        with torch.enable_grad():  # torchmetrics runs update without gradients
            for index, attack in enumerate(self.followers.values()):
                gradient, _ = input_gradient(followed_objective(attack, objective), images, target)
                self.vanishing[index] += vanished(gradient).sum()
        self.samples += len(images)

    def compute(self) -> dict[str, dict[str, Tensor]]:
        """``{attack key: {"check/vanishing_gradients": share}}``."""
        shares = dict(zip(self.followers, (self.vanishing / self.samples).float(), strict=True))
        return {key: {"check/vanishing_gradients": shares[route]} for key, route in self.routes.items()}


class LossEvidence(Metric):
    """How many samples' attack loss (``AttackTrace.losses``) ended no higher than it started."""

    full_state_update = False

    def __init__(self) -> None:
        super().__init__()
        _sums(self, "stalled", "counted")

    def update(self, trace: AttackTrace) -> None:
        stalled, counted = stalled_count(trace.losses.detach().cpu())
        self.stalled += stalled
        self.counted += counted

    def compute(self) -> dict[str, Tensor]:
        if self.counted == 0:
            return {}
        return {"check/loss_not_increasing": (self.stalled / self.counted).float()}


@dataclass(frozen=True)
class CellSummary:
    """One attack at one budget, as the cross-cell checks see it."""

    attack: str
    budget: str
    name: str  # the registry name (``fgsm``, ``pgd``, ...)
    access: str  # ``Attack.access``
    steps: int
    norm: str | None
    accuracy: float


def cross_checks(cells: Sequence[CellSummary]) -> list[tuple[CellSummary, str, str]]:
    """``(cell, check, reason)`` for every warning across cells of one model and seed:
    (a) accuracy rising with the budget for the same attack; (b) an iterative attack weaker than FGSM at the
    same budget and norm; (g) a black-box or transfer attack stronger than every white-box one there."""
    warnings = []
    by_attack: dict[str, list[CellSummary]] = {}
    for cell in cells:
        if budget_value(cell.budget) is not None and cell.accuracy == cell.accuracy:
            by_attack.setdefault(cell.attack, []).append(cell)
    for runs in by_attack.values():
        runs = sorted(runs, key=lambda c: budget_value(c.budget))
        for smaller, larger in zip(runs, runs[1:], strict=False):
            if larger.accuracy > smaller.accuracy + ORDER_TOLERANCE:
                warnings.append((larger, "accuracy_rises_with_budget",
                                 f"accuracy {larger.accuracy:.3f} at {larger.budget} is above "
                                 f"{smaller.accuracy:.3f} at {smaller.budget}"))
    measured = [cell for runs in by_attack.values() for cell in runs]
    for cell in measured:
        same = [c for c in measured if c.budget == cell.budget and c.norm == cell.norm]
        fgsm = [c for c in same if c.name == "fgsm"]
        iterative = cell.access == "white-box" and cell.steps > 1
        if iterative and fgsm and cell.accuracy > fgsm[0].accuracy + ORDER_TOLERANCE:
            warnings.append((cell, "weaker_than_fgsm",
                             f"{cell.steps}-step {cell.name} leaves accuracy {cell.accuracy:.3f}, FGSM "
                             f"{fgsm[0].accuracy:.3f}: its steps are too small or too few"))
        white = [c.accuracy for c in same if c.access == "white-box"]
        if cell.access != "white-box" and white and cell.accuracy + ORDER_TOLERANCE < min(white):
            warnings.append((cell, "black_box_beats_white_box",
                             f"{cell.access} attack leaves accuracy {cell.accuracy:.3f}, below every white-box "
                             f"attack ({min(white):.3f}): the white-box gradients may be masked"))
    return warnings
