"""Attack names -> classes, as timm's registry maps model names: configs name an attack and its budget."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from attacks.apgd import APGD
from attacks.base import Attack
from attacks.cw import CWL2, CWLinf
from attacks.deepfool import DeepFool
from attacks.dense import DenseAdversaryGeneration
from attacks.exposure import BracketedExposureFusion, ConvolutionalBracketedExposureFusion, MultiplicativeExposure
from attacks.gradient import BIM, FGSM, MIFGSM, PGD, TIBIM, TIFGSM, TIMIFGSM
from attacks.one_pixel import OnePixelAttack
from attacks.smia import SMIA
from attacks.square import SquareAttack
from attacks.universal import UniversalPerturbation


@dataclass(frozen=True)
class AttackEntry:
    """An attack class and the constructor argument its budget sets (None: a minimal-norm attack)."""

    cls: type[Attack]
    budget: str | None


ATTACKS: dict[str, AttackEntry] = {
    entry.cls.name: entry
    for entry in (
        AttackEntry(FGSM, "eps"),
        AttackEntry(BIM, "eps"),
        AttackEntry(PGD, "eps"),
        AttackEntry(MIFGSM, "eps"),
        AttackEntry(TIFGSM, "eps"),
        AttackEntry(TIBIM, "eps"),
        AttackEntry(TIMIFGSM, "eps"),
        AttackEntry(APGD, "eps"),
        AttackEntry(CWLinf, "eps"),
        AttackEntry(CWL2, None),
        AttackEntry(DeepFool, None),
        AttackEntry(SMIA, "eps"),
        AttackEntry(DenseAdversaryGeneration, "eps"),
        AttackEntry(MultiplicativeExposure, "eps"),
        AttackEntry(BracketedExposureFusion, "alpha"),
        AttackEntry(ConvolutionalBracketedExposureFusion, "alpha"),
        AttackEntry(UniversalPerturbation, "eps"),
        AttackEntry(SquareAttack, "eps"),
        AttackEntry(OnePixelAttack, "pixels"),
    )
}


def build_attack(name: str, budget: float | None = None, **settings: Any) -> Attack:
    """The attack registered as ``name``, with ``budget`` set on its budget argument."""
    if name not in ATTACKS:
        raise ValueError(f"unknown attack {name!r}; known: {', '.join(sorted(ATTACKS))}")
    entry = ATTACKS[name]
    if budget is not None:
        if entry.budget is None:
            raise ValueError(f"attack {name!r} is a minimal-perturbation attack and takes no budget")
        settings[entry.budget] = int(budget) if entry.budget == "pixels" else budget
    return entry.cls(**settings)
