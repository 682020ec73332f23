"""Property-based fuzzing of the benchmark config checks: any YAML value in a field gives either a valid grid,
when the value is in the field's domain, or a ConfigError whose every problem names that field (never
another exception, never a value outside the domain accepted)."""

from __future__ import annotations

import copy
import math
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from attacks import FGSM, PGD
from benchmarks.grid import CONFIG_DIR, read_benchmark
from benchmarks.problems import ConfigError, parse_yaml
from benchmarks.training import parse_train_config
from benchmarks.validation import validate_benchmark

BASE: dict[str, Any] = {
    "name": "fuzz",
    "seeds": [0],
    "evaluation": {"max_batches": 1, "examples": 0, "brisque": False},
    "overrides": {"trainer.max_epochs": 1},
    "datasets": {
        "fundus": {
            "train": "synthetic_fundus",
            "attacks": {"fgsm": {"budgets": ["8/255"]}, "pgd": {"budgets": ["8/255"], "settings": {"steps": 2}}},
        }
    },
}
TEXT = st.text(st.characters(blacklist_categories=("Cs",)), max_size=6)
SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-3, max_value=2**33)
    | st.floats(allow_nan=True, allow_infinity=True)
    | TEXT
    | st.sampled_from(["8/255", "0.2/255", "min", "1/0", "1e-3", "a/b", "..", " x", "5", "synthetic_fundus"])
)
VALUES = st.recursive(
    SCALARS, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(TEXT, inner, max_size=2), max_leaves=5
)
TRAIN_CONFIG = CONFIG_DIR / "train" / "synthetic_fundus.yaml"
RUNS = settings(max_examples=40, deadline=None, derandomize=True, database=None)


def is_int(value: Any, minimum: int, maximum: float = math.inf) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and minimum <= value <= maximum


def is_name(value: Any) -> bool:
    return (
        isinstance(value, str)
        and value == value.strip()
        and value not in ("", ".", "..")
        and not re.search(r"[/\\\x00-\x1f\x7f]", value)
    )


def is_budget(value: Any) -> float | None:
    """The budget a config value stands for, None when it is not a finite number >= 0 or a fraction of two."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        return None
    try:
        numerator, _, denominator = str(value).replace(" ", "").partition("/")
        budget = float(numerator) / float(denominator or 1)
    except (ValueError, ZeroDivisionError):
        return None
    return budget if math.isfinite(budget) and budget >= 0 else None


def builds(factory: Callable[[], Any]) -> bool:
    try:
        factory()
    except (ValueError, TypeError):
        return False
    return True


def fgsm_budgets(value: Any) -> bool:
    """A non-empty list of distinct budgets at which FGSM builds (a null or min budget would be its default)."""
    if not isinstance(value, list) or not value:
        return False
    budgets = [is_budget(item) for item in value]
    return (
        None not in budgets
        and len(set(budgets)) == len(budgets)
        and all(builds(lambda b=budget: FGSM(eps=b)) for budget in budgets)
    )


BUDGETS = st.sampled_from(["8/255", "2/255", "0.2/255", "min", None, "1/0", "2", "0", " 1 / 255"]) | st.floats(0, 2)
LABELS = st.sampled_from(["resnet18", "big", "a/b", "", " x", "..", "ok.1"])
# field -> (its domain, values near it that the generic VALUES rarely hit)
FIELDS: dict[tuple[str, ...], tuple[Callable[[Any], bool], st.SearchStrategy]] = {
    ("name",): (lambda v: v is None or is_name(v), LABELS),
    ("description",): (lambda v: v is None or isinstance(v, str), TEXT),
    ("seeds",): (
        lambda v: isinstance(v, list) and bool(v) and all(is_int(s, 0, 2**32 - 1) for s in v) and len(set(v)) == len(v),
        st.lists(st.integers(-2, 2**32 + 1) | st.sampled_from([0, 1, 2**32 - 1, 2**32]), max_size=3),
    ),
    ("evaluation", "max_batches"): (lambda v: v is None or is_int(v, 1), st.integers(-2, 5)),
    ("evaluation", "examples"): (lambda v: is_int(v, 0), st.integers(-2, 5)),
    ("evaluation", "brisque"): (lambda v: isinstance(v, bool), st.booleans()),
    ("datasets", "fundus", "attacks", "fgsm", "budgets"): (fgsm_budgets, st.lists(BUDGETS, max_size=3)),
    ("datasets", "fundus", "attacks", "pgd", "settings", "steps"): (
        lambda v: builds(lambda: PGD(eps=0.03, steps=v)),
        st.integers(-1, 5) | st.floats(0, 3),
    ),
    ("datasets", "fundus", "train"): (
        lambda v: (
            isinstance(v, str)
            and v != ""
            and (Path(v).is_file() or (CONFIG_DIR / "train" / f"{v.removesuffix('.yaml')}.yaml").is_file())
        ),
        st.sampled_from(["synthetic_fundus", "synthetic_fundus.yaml", "retinamnist", "nope", str(TRAIN_CONFIG)]),
    ),
    ("datasets", "fundus", "models"): (
        lambda v: (
            v is None
            or (
                isinstance(v, dict)
                and all(is_name(k) and (m is None or isinstance(m, dict)) for k, m in v.items())
                and all(isinstance(k, str) for m in v.values() if isinstance(m, dict) for k in m)
            )
        ),
        st.dictionaries(LABELS, st.none() | st.just({}) | st.dictionaries(TEXT, SCALARS, max_size=1), max_size=2),
    ),
}


def config_with(path: tuple[str, ...], value: Any) -> dict[str, Any]:
    config = copy.deepcopy(BASE)
    section = config
    for part in path[:-1]:
        section = section[part]
    section[path[-1]] = value
    return config


def written(text: str, path: tuple[str, ...]) -> Any:
    """The field's value as the config loader reads the dumped YAML back (e.g. ``1e3`` becomes a number)."""
    section = parse_yaml(text, "fuzz")
    for part in path:
        section = section[part]
    return section


def on_path(key: str, field: str) -> bool:
    """Whether a problem's key is the field, inside it, or the entry that holds it (an attack's settings are
    checked by building the attack); any key is inside the whole document ("")."""
    return not field or key == field or key.startswith(f"{field}.") or field.startswith(f"{key}.")


@pytest.mark.parametrize("path", list(FIELDS), ids=".".join)
def test_a_field_is_valid_in_its_domain_and_else_one_error_naming_it(path, tmp_path_factory):
    target = tmp_path_factory.mktemp("fuzz") / "bench.yaml"
    in_domain, near = FIELDS[path]
    field = ".".join(path)

    @RUNS
    @given(VALUES | near)
    def check(value: Any) -> None:
        target.write_text(yaml.safe_dump(config_with(path, value)))
        value = written(target.read_text(), path)
        benchmark, problems = read_benchmark(target)
        if problems:
            assert not in_domain(value), problems
            assert all(problem.file == str(target) and on_path(problem.key, field) for problem in problems), problems
        else:
            assert in_domain(value), value
            assert benchmark.cells

    check()


@pytest.mark.parametrize(
    "path",
    [(), ("datasets",), ("datasets", "fundus"), ("datasets", "fundus", "attacks")],
    ids=lambda path: ".".join(path) or "document",
)
def test_any_yaml_in_a_section_gives_a_grid_or_problems_of_that_section(path, tmp_path_factory):
    target = tmp_path_factory.mktemp("fuzz") / "bench.yaml"
    field = ".".join(path)

    @RUNS
    @given(VALUES | st.dictionaries(TEXT | st.integers(), VALUES, max_size=3))
    def check(value: Any) -> None:
        target.write_text(yaml.safe_dump(config_with(path, value) if path else value))
        try:
            _, problems = read_benchmark(target)
        except ConfigError as error:  # the file is not a mapping
            assert not path and [(problem.file, problem.key) for problem in error.problems] == [(str(target), "")]
            return
        assert all(problem.file == str(target) and on_path(problem.key, field) for problem in problems), problems

    check()


def test_a_model_override_is_accepted_only_where_model_and_data_agree(tmp_path_factory):
    """The model's class count against the 5-class fundus phantom: LightningCLI parses it, the validation pass
    compares it with the datamodule's; only 5 is accepted, and every refusal names the override."""
    target = tmp_path_factory.mktemp("fuzz") / "bench.yaml"
    field = "overrides.model.init_args.num_classes"

    @settings(max_examples=15, deadline=None, derandomize=True, database=None)
    @given(VALUES | st.just(5) | st.just("5"))
    def check(value: Any) -> None:
        target.write_text(yaml.safe_dump(config_with(("overrides", "model.init_args.num_classes"), value)))
        try:
            benchmark = validate_benchmark(target)
        except ConfigError as error:
            assert all((problem.file, problem.key) == (str(target), field) for problem in error.problems), error
        else:
            (spec,) = set(benchmark.models)
            assert parse_train_config(spec.train_config, spec.args).model.init_args.num_classes == 5

    check()
