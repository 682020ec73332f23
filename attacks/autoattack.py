"""AutoAttack (Croce & Hein, ICML 2020, "Reliable evaluation of adversarial robustness with an ensemble of
diverse parameter-free attacks", Sec. 5): a cascade of parameter-free attacks, each run only on the samples
every earlier attack failed on."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from attacks.adaptive import EOT, EOT_DRAWS
from attacks.apgd import APGD, APGDDLR, APGDT
from attacks.base import Attack, AttackResult, Objective, SampleRandom, TraceRecorder, check_budget, check_steps
from attacks.blackbox import class_logits
from attacks.fab import FAB, FABTargeted
from attacks.norms import norm_by_name
from attacks.square import SquareAttack

SQUARE_QUERIES = 5000
SQUARE_P_INIT = 0.8  # AutoAttack's Square: larger first squares than the Square paper's 0.05
RESTARTS_PLUS = 5
# version -> stages (attack class, its settings, draws of Expectation over Transformation; 1 = none)
VERSIONS: dict[str, tuple[tuple[type[Attack], dict[str, Any], int], ...]] = {
    "standard": (
        (APGD, {}, 1),
        (APGDT, {}, 1),
        (FABTargeted, {}, 1),
        (SquareAttack, {"max_queries": SQUARE_QUERIES, "p_init": SQUARE_P_INIT}, 1),
    ),
    "plus": (
        (APGD, {"n_restarts": RESTARTS_PLUS}, 1),
        (APGDDLR, {"n_restarts": RESTARTS_PLUS}, 1),
        (FAB, {"n_restarts": RESTARTS_PLUS}, 1),
        (SquareAttack, {"max_queries": SQUARE_QUERIES, "p_init": SQUARE_P_INIT}, 1),
        (APGDT, {}, 1),
        (FABTargeted, {}, 1),
    ),
    "rand": (
        (APGD, {}, EOT_DRAWS),
        (APGDDLR, {}, EOT_DRAWS),
    ),
}
LINF_ONLY = (SquareAttack,)  # our Square searches the Linf ball only: an L2 cascade runs without it
CLEAN_MISTAKE, ROBUST = 0, -1  # ``extras["stage"]`` of samples wrong when clean, and of those no stage broke


class AutoAttack(Attack):
    """The AutoAttack cascade (Croce & Hein 2020, Sec. 5) in its versions ``standard`` (APGD-CE, APGD-T,
    FAB-T, Square with 5000 queries), ``plus`` (APGD-CE and APGD-DLR with 5 restarts, FAB with 5
    restarts, Square, APGD-T, FAB-T) and ``rand`` (APGD-CE and APGD-DLR with Expectation over
    Transformation over 20 draws, for randomised models), for Linf and L2 (L2 without Square, which we
    have for Linf only). Each stage attacks only the samples still classified correctly; ``extras["stage"]``
    records per sample which stage broke it (1-based into ``extras["stages"]``; 0: wrong when clean; -1:
    robust). Classification objectives only.
    """

    name = "autoattack"

    def __init__(
        self, eps: float = 8 / 255, norm: str = "linf", version: str = "standard", steps: int = 100, seed: int = 0
    ) -> None:
        super().__init__(seed)
        check_budget("eps", eps, norm)
        norm_by_name(norm)
        check_steps("steps", steps)
        if version not in VERSIONS:
            raise ValueError(f"version must be one of {sorted(VERSIONS)}, got {version!r}")
        self.eps = float(eps)
        self.norm = norm
        self.version = version
        self.steps = int(steps)
        self.stages = [
            (cls(**self.stage_settings(cls, settings, draws)), draws)
            for cls, settings, draws in VERSIONS[version]
            if not (norm != "linf" and cls in LINF_ONLY)
        ]

    def stage_settings(self, cls: type[Attack], settings: dict[str, Any], draws: int) -> dict[str, Any]:
        """A stage's constructor arguments: the cascade's eps, norm, steps and seed, then the version's own. An
        APGD stage on the model itself (no EoT) stops each sample at its first fooling iterate: the cascade
        only asks whether a sample is broken, and the stopped samples leave the batch (see ``APGD``)."""
        shared: dict[str, Any] = {"eps": self.eps, "seed": self.seed}
        if cls is not SquareAttack:
            shared |= {"norm": self.norm, "steps": self.steps}
        if issubclass(cls, APGD) and draws == 1:
            shared["early_stop"] = True
        return shared | settings

    def run(self, objective: Objective, images: Tensor, target: Any, random: SampleRandom) -> AttackResult:
        adv = images.clone()
        correct = class_logits(objective, images).argmax(dim=1) == target
        stage = torch.where(correct, ROBUST, CLEAN_MISTAKE)
        for number, (attack, draws) in enumerate(self.stages, start=1):
            rows = correct.nonzero().squeeze(1)
            if len(rows) == 0:
                break
            attacked = objective if draws == 1 else EOT(objective, draws)
            ids = None if random.ids is None else [random.ids[i] for i in rows.tolist()]
            crafted = attack(attacked, images[rows], target[rows], ids=ids).adv_images
            fooled = class_logits(objective, crafted).argmax(dim=1) != target[rows]
            broken = rows[fooled]
            adv[broken] = crafted[fooled]
            stage[broken] = number
            correct[broken] = False
        recorder = TraceRecorder(images)
        recorder.step(adv - images)
        return AttackResult(adv, recorder.finish(adv - images), {"stage": stage, "stages": self.stage_names})

    @property
    def stage_names(self) -> Sequence[str]:
        """The stages in order, as ``name`` or ``name x draws`` with EoT."""
        return [attack.name if draws == 1 else f"{attack.name} x {draws} draws" for attack, draws in self.stages]
