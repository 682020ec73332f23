"""Attack names -> classes, as timm's registry maps model names: configs name an attack and its budget.
A config may also name its own attack by import path (``mypackage.attacks.MyAttack``)."""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any

from attacks.alma_prox import ALMAProx
from attacks.apgd import APGD, APGDDLR, APGDT
from attacks.asma import ASMA
from attacks.autoattack import AutoAttack
from attacks.base import Attack
from attacks.cospgd import CosPGD
from attacks.cw import CWL2, CWLinf
from attacks.deepfool import DeepFool
from attacks.dense import DenseAdversaryGeneration
from attacks.divergence import KLDivergencePGD
from attacks.exposure import BracketedExposureFusion, ConvolutionalBracketedExposureFusion, MultiplicativeExposure
from attacks.fab import FAB, FABTargeted
from attacks.fmn import FMN
from attacks.gradient import BIM, FGSM, MIFGSM, PGD, TIBIM, TIFGSM, TIMIFGSM
from attacks.one_pixel import OnePixelAttack
from attacks.sea import SEA
from attacks.segpgd import SegPGD
from attacks.smia import SMIA
from attacks.square import SquareAttack
from attacks.tog import TOGFabrication, TOGMislabeling, TOGUntargeted, TOGVanishing
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
        AttackEntry(KLDivergencePGD, "eps"),
        AttackEntry(MIFGSM, "eps"),
        AttackEntry(TIFGSM, "eps"),
        AttackEntry(TIBIM, "eps"),
        AttackEntry(TIMIFGSM, "eps"),
        AttackEntry(APGD, "eps"),
        AttackEntry(APGDDLR, "eps"),
        AttackEntry(APGDT, "eps"),
        AttackEntry(AutoAttack, "eps"),
        AttackEntry(CWLinf, "eps"),
        AttackEntry(CWL2, None),
        AttackEntry(DeepFool, None),
        AttackEntry(FMN, None),
        AttackEntry(FAB, "eps"),
        AttackEntry(FABTargeted, "eps"),
        AttackEntry(SMIA, "eps"),
        AttackEntry(DenseAdversaryGeneration, "eps"),
        AttackEntry(ASMA, None),
        AttackEntry(ALMAProx, None),
        AttackEntry(SegPGD, "eps"),
        AttackEntry(CosPGD, "eps"),
        AttackEntry(SEA, "eps"),
        AttackEntry(MultiplicativeExposure, "eps"),
        AttackEntry(BracketedExposureFusion, "alpha"),
        AttackEntry(ConvolutionalBracketedExposureFusion, "alpha"),
        AttackEntry(UniversalPerturbation, "eps"),
        AttackEntry(SquareAttack, "eps"),
        AttackEntry(OnePixelAttack, "pixels"),
        AttackEntry(TOGVanishing, "eps"),
        AttackEntry(TOGFabrication, "eps"),
        AttackEntry(TOGMislabeling, "eps"),
        AttackEntry(TOGUntargeted, "eps"),
    )
}


def attack_entry(name: str) -> AttackEntry:
    """The registered attack ``name``, or the :class:`Attack` subclass at the import path ``name``
    (``package.module.Class``) whose budget argument is its class attribute ``budget_argument`` (default
    ``eps``; None for a minimal-perturbation attack)."""
    if name in ATTACKS:
        return ATTACKS[name]
    if "." not in name:
        raise ValueError(f"unknown attack {name!r}; known: {', '.join(sorted(ATTACKS))}, or an import path")
    module, _, attribute = name.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module), attribute)
    except (ImportError, AttributeError) as error:
        raise ValueError(f"attack {name!r}: cannot import it ({error})") from error
    if not (isinstance(cls, type) and issubclass(cls, Attack)):
        raise ValueError(f"attack {name!r} is not a subclass of attacks.Attack")
    return AttackEntry(cls, getattr(cls, "budget_argument", "eps"))


def build_attack(name: str, budget: float | None = None, **settings: Any) -> Attack:
    """The attack ``name`` (see :func:`attack_entry`), with ``budget`` set on its budget argument."""
    entry = attack_entry(name)
    if budget is not None:
        if entry.budget is None:
            raise ValueError(f"attack {name!r} is a minimal-perturbation attack and takes no budget")
        settings[entry.budget] = int(budget) if entry.budget == "pixels" else budget
    return entry.cls(**settings)
