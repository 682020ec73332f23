"""The attack library: pure tensor code written against the task objective (``attacks.base.Objective``).

``from attacks import PGD`` gives an attack class; ``build_attack("pgd", 8 / 255)`` builds one by its
registered name, as configs do. Every attack is called as ``attack(objective, images, target, ids=None)``.
"""

from attacks.apgd import APGD, APGDDLR, APGDT
from attacks.autoattack import AutoAttack
from attacks.base import Attack, AttackResult, AttackTrace, Objective, SampleRandom, frozen_model
from attacks.cw import CWL2, CWLinf
from attacks.deepfool import DeepFool
from attacks.dense import DenseAdversaryGeneration
from attacks.exposure import BracketedExposureFusion, ConvolutionalBracketedExposureFusion, MultiplicativeExposure
from attacks.fab import FAB, FABTargeted
from attacks.fmn import FMN, robust_accuracy_curve
from attacks.gradient import BIM, FGSM, MIFGSM, PGD, TIBIM, TIFGSM, TIMIFGSM, GradientAttack
from attacks.norms import L2, NORMS, Linf, Norm
from attacks.one_pixel import OnePixelAttack
from attacks.registry import ATTACKS, AttackEntry, attack_entry, build_attack
from attacks.smia import SMIA
from attacks.square import SquareAttack
from attacks.targets import TARGET_MODES
from attacks.transfer import EnsembleObjective, TransferAttack
from attacks.universal import UniversalPerturbation

__all__ = [
    "APGD",
    "APGDDLR",
    "APGDT",
    "ATTACKS",
    "BIM",
    "CWL2",
    "FAB",
    "FGSM",
    "FMN",
    "L2",
    "MIFGSM",
    "NORMS",
    "PGD",
    "SMIA",
    "TARGET_MODES",
    "TIBIM",
    "TIFGSM",
    "TIMIFGSM",
    "Attack",
    "AutoAttack",
    "AttackEntry",
    "AttackResult",
    "AttackTrace",
    "BracketedExposureFusion",
    "CWLinf",
    "ConvolutionalBracketedExposureFusion",
    "DeepFool",
    "DenseAdversaryGeneration",
    "EnsembleObjective",
    "FABTargeted",
    "GradientAttack",
    "Linf",
    "MultiplicativeExposure",
    "Norm",
    "Objective",
    "OnePixelAttack",
    "SampleRandom",
    "SquareAttack",
    "TransferAttack",
    "UniversalPerturbation",
    "attack_entry",
    "build_attack",
    "frozen_model",
    "robust_accuracy_curve",
]
