"""Attack.settings: every constructor argument with its effective value, recorded by the base class for
every attack; variants declare only what differs from their parent."""

from __future__ import annotations

import inspect
import json

import pytest

from attacks import (
    ATTACKS,
    BIM,
    FGSM,
    MIFGSM,
    PGD,
    SMIA,
    TIBIM,
    TIFGSM,
    Attack,
    CWLinf,
    GradientAttack,
    build_attack,
)
from attacks.transfer import TransferAttack
from lightning_modules.objectives import ClassificationObjective
from tests.attacks.toys import small_cnn

BUDGETS = {"eps": 4 / 255, "alpha": 0.01, "pixels": 1}


def fixed_arguments(cls: type[Attack]) -> set[str]:
    return {name for klass in cls.__mro__ for name in klass.__dict__.get("fixed", {})}


@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_settings_hold_every_argument_and_rebuild_the_attack(name):
    entry = ATTACKS[name]
    attack = build_attack(name, BUDGETS[entry.budget] if entry.budget else None, seed=3)
    settings = attack.settings
    assert json.loads(json.dumps(settings)) == settings  # plain data, as stored and logged
    assert set(inspect.signature(type(attack)).parameters) <= set(settings)
    assert settings["seed"] == 3
    if entry.budget:
        assert settings[entry.budget] == BUDGETS[entry.budget]
    rebuilt = type(attack)(**{k: v for k, v in settings.items() if k not in fixed_arguments(type(attack))})
    assert rebuilt.settings == settings
    assert repr(attack).startswith(f"{type(attack).__name__}(") and f"seed={3!r}" in repr(attack)


def test_pgd_settings_show_norm_targeting_and_the_effective_step():
    settings = PGD(eps=8 / 255, norm="l2", steps=10).settings
    assert settings["norm"] == "l2" and settings["steps"] == 10 and settings["target_mode"] == "untargeted"
    assert settings["early_stop"] is False and settings["seed"] == 0
    assert settings["alpha"] == PGD(eps=8 / 255, norm="l2", steps=10).alpha  # the step None stood for
    assert PGD(eps=8 / 255, steps=10).settings != PGD(eps=8 / 255, steps=11).settings


def test_variants_declare_only_what_differs():
    assert "steps" not in inspect.signature(FGSM).parameters and FGSM().settings["steps"] == 1
    with pytest.raises(TypeError, match="steps"):
        FGSM(steps=3)
    assert TIBIM().steps == BIM().steps == 10 and TIBIM().settings["kernel_size"] == 15
    assert PGD().settings["random_start"] and not BIM().settings["random_start"]
    assert TIFGSM().settings["kernel_size"] == 15 and TIFGSM().steps == 1
    for variant in (FGSM, BIM, PGD, TIBIM, TIFGSM):
        assert "__init__" not in vars(variant) or vars(variant)["__init__"].__qualname__.startswith("configured")
        assert issubclass(variant, GradientAttack)
    # an attack adding arguments takes them first and its parent's after, as keywords
    assert list(inspect.signature(SMIA).parameters)[:3] == ["stabilisation_weight", "kernel_size", "sigma"]
    assert SMIA().settings["eps"] == 0.05 and SMIA().settings["kernel_size"] == 5
    with pytest.raises(TypeError, match="target_mode"):
        SMIA(target_mode="least_likely")


def test_default_step_sizes_follow_the_number_of_steps():
    """PGD 2.5 eps / steps (Madry et al.), BIM 1.25 eps / steps (Kurakin et al.), MI-FGSM eps / steps."""
    for steps in (5, 10, 40):
        assert PGD(eps=0.1, steps=steps).alpha == pytest.approx(0.25 / steps)
        assert BIM(eps=0.1, steps=steps).alpha == pytest.approx(0.125 / steps)
        assert MIFGSM(eps=0.1, steps=steps).alpha == pytest.approx(0.1 / steps)
    assert CWLinf(eps=0.1, steps=10).alpha == PGD(eps=0.1, steps=10).alpha and CWLinf().random_start


def test_unknown_settings_fail_naming_the_argument():
    with pytest.raises(TypeError, match="stepz"):
        build_attack("pgd", 4 / 255, stepz=3)
    with pytest.raises(ValueError, match="eps must be a finite number"):
        PGD(eps=float("nan"))


def test_a_wrapped_attack_records_the_inner_settings():
    transfer = TransferAttack(PGD(eps=2 / 255, steps=3), ClassificationObjective(small_cnn(4, dense=False)))
    settings = transfer.settings
    assert settings["attack"]["class"] == "PGD" and settings["attack"]["steps"] == 3
    assert settings["surrogate"] == "ClassificationObjective"
