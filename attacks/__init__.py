"""The attack library: pure tensor code written against the task objective (``attacks.base.Objective``).

``from attacks import PGD`` gives an attack class; ``build_attack("pgd", 8 / 255)`` builds one by its
registered name, as configs do. Every attack is called as ``attack(objective, images, target, ids=None)``.
"""

from attacks.adaptive import BPDA, EOT, AdaptiveAttack, DetectorAware, InputTransformed, StraightThrough
from attacks.alma_prox import ALMAProx
from attacks.apgd import APGD, APGDDLR, APGDT
from attacks.asma import ASMA
from attacks.autoattack import AutoAttack
from attacks.base import Attack, AttackResult, AttackTrace, Objective, SampleRandom, frozen_model
from attacks.compiled import CompiledObjective
from attacks.cospgd import CosPGD
from attacks.cw import CWL2, CWLinf
from attacks.deepfool import DeepFool
from attacks.dense import DenseAdversaryGeneration
from attacks.divergence import DivergenceObjective, KLDivergencePGD
from attacks.exposure import BracketedExposureFusion, ConvolutionalBracketedExposureFusion, MultiplicativeExposure
from attacks.fab import FAB, FABTargeted
from attacks.fmn import FMN, robust_accuracy_curve
from attacks.gradient import BIM, FGSM, MIFGSM, PGD, TIBIM, TIFGSM, TIMIFGSM, GradientAttack
from attacks.norms import L2, NORMS, Linf, Norm
from attacks.one_pixel import OnePixelAttack
from attacks.precision import PRECISIONS, MixedPrecisionObjective, with_precision
from attacks.registry import ATTACKS, AttackEntry, attack_entry, build_attack
from attacks.sea import SEA, SegmentationAPGD
from attacks.segpgd import SegPGD
from attacks.smia import SMIA
from attacks.square import SquareAttack
from attacks.targets import TARGET_MODES
from attacks.tog import TOGFabrication, TOGMislabeling, TOGUntargeted, TOGVanishing
from attacks.transfer import EnsembleObjective, TransferAttack
from attacks.universal import UniversalPerturbation
from attacks.wrappers import ObjectiveWrapper

__all__ = [
    "APGD",
    "APGDDLR",
    "APGDT",
    "ASMA",
    "AdaptiveAttack",
    "ATTACKS",
    "BIM",
    "BPDA",
    "CWL2",
    "DetectorAware",
    "EOT",
    "FAB",
    "FGSM",
    "FMN",
    "L2",
    "MIFGSM",
    "NORMS",
    "PGD",
    "PRECISIONS",
    "SEA",
    "SMIA",
    "TARGET_MODES",
    "TIBIM",
    "TIFGSM",
    "TIMIFGSM",
    "ALMAProx",
    "Attack",
    "AutoAttack",
    "AttackEntry",
    "AttackResult",
    "AttackTrace",
    "BracketedExposureFusion",
    "CWLinf",
    "CompiledObjective",
    "ConvolutionalBracketedExposureFusion",
    "CosPGD",
    "DeepFool",
    "DenseAdversaryGeneration",
    "DivergenceObjective",
    "EnsembleObjective",
    "FABTargeted",
    "GradientAttack",
    "InputTransformed",
    "KLDivergencePGD",
    "Linf",
    "MixedPrecisionObjective",
    "MultiplicativeExposure",
    "Norm",
    "Objective",
    "ObjectiveWrapper",
    "OnePixelAttack",
    "SampleRandom",
    "SegPGD",
    "SegmentationAPGD",
    "SquareAttack",
    "StraightThrough",
    "TOGFabrication",
    "TOGMislabeling",
    "TOGUntargeted",
    "TOGVanishing",
    "TransferAttack",
    "UniversalPerturbation",
    "attack_entry",
    "build_attack",
    "frozen_model",
    "robust_accuracy_curve",
    "with_precision",
]
