"""Benchmark configs: a YAML grid of datasets x models x attacks x budgets x seeds, expanded into cells.

A config names train configs (``benchmarks/configs/train``) for its datasets, model variants as
LightningCLI overrides, attacks by registry name with settings and budgets, and optional ``transfer``
and ``detection`` studies. ``profiles`` hold deep-merged variants (``real`` data, ``reduced`` size)
chosen with ``medadv run --profile``. docs/benchmarks.md describes every key.
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from attacks.base import Attack
from attacks.budgets import budget_label, parse_budget, scaled_by_budget
from attacks.registry import attack_entry, build_attack

CONFIG_DIR = Path(__file__).resolve().parent / "configs"
TOP_LEVEL_KEYS = {"name", "description", "seeds", "evaluation", "overrides", "datasets", "profiles"}
DATASET_KEYS = {"train", "overrides", "models", "attacks", "transfer", "detection"}
ATTACK_KEYS = {"attack", "budgets", "settings"}
EVALUATION_KEYS = {"max_batches", "examples", "brisque"}
TRANSFER_KEYS = {"attacks", "budgets", "sources"}
DETECTION_KEYS = {"attacks", "budgets", "settings"}


def resolve_config(name_or_path: str | Path, folder: str = "") -> Path:
    """A config path as given, or the name of a shipped config under ``benchmarks/configs/<folder>``."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    directory = CONFIG_DIR / folder
    shipped = directory / f"{str(name_or_path).removesuffix('.yaml')}.yaml"
    if shipped.is_file():
        return shipped
    available = ", ".join(sorted(p.stem for p in directory.glob("*.yaml")))
    raise FileNotFoundError(f"config {str(name_or_path)!r} not found (shipped configs in {directory}: {available})")


def deep_merge(base: Mapping[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` with ``update`` merged in: mappings merge key by key, null removes a key (so a profile can
    drop a model, an attack or an override), everything else is replaced."""
    merged = copy.deepcopy(dict(base))
    for key, value in update.items():
        if value is None:
            merged.pop(key, None)
        elif isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def stable_hash(value: Any) -> str:
    """A short hash of JSON-able data, independent of key order."""
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:16]


def override_args(overrides: Mapping[str, Any]) -> list[str]:
    """``{"trainer.max_epochs": 2}`` -> ``["--trainer.max_epochs=2"]`` for LightningCLI."""
    return [f"--{key}={json.dumps(value) if not isinstance(value, str) else value}" for key, value in overrides.items()]


@dataclass(frozen=True)
class ModelSpec:
    """One model to train or load: a train config plus overrides and seed; ``digest`` keys its checkpoint."""

    dataset: str
    label: str
    train_config: Path
    overrides: tuple[str, ...]
    seed: int

    @property
    def args(self) -> list[str]:
        return [*self.overrides, f"--seed_everything={self.seed}"]

    @property
    def digest(self) -> str:
        return stable_hash({"config": self.train_config.read_text(), "args": self.args})


@dataclass(frozen=True)
class AttackSetting:
    """An attack as a config names it: label (metric name), registry name, settings, one budget."""

    label: str
    name: str
    settings: dict[str, Any]
    budget: float | None

    def as_dict(self, seed: int) -> dict[str, Any]:
        """Label, name, budget and the built attack's full settings (``Attack.settings``) at ``seed``."""
        return {"label": self.label, "name": self.name, "budget": self.budget, "settings": self.build(seed).settings}

    def build(self, seed: int, budget: float | None = None) -> Attack:
        """The registry attack at ``budget`` (default: this setting's), seeded with ``seed`` unless its
        settings name a seed; settings relative to the budget (``alpha: eps/10``) are resolved at it."""
        budget = self.budget if budget is None else budget
        return build_attack(self.name, budget, **{"seed": seed, **budget_settings(self.settings, budget, self.label)})


@dataclass(frozen=True)
class Cell:
    """One unit of work and one row of the results store."""

    benchmark: str
    kind: str
    dataset: str
    model: str
    attack: str
    budget: float | None
    seed: int
    models: tuple[ModelSpec, ...]
    attacks: tuple[AttackSetting, ...]
    evaluation: dict[str, Any] = field(default_factory=dict)
    study: dict[str, Any] = field(default_factory=dict)

    @property
    def budget_label(self) -> str:
        return budget_label(self.budget)

    @property
    def key(self) -> str:
        """``{benchmark}/{dataset}/{model}/{attack}/{budget}/seed{seed}``; transfer cells have model
        ``transfer``, detection cells attack ``detection``."""
        return f"{self.benchmark}/{self.dataset}/{self.model}/{self.attack}/{self.budget_label}/seed{self.seed}"

    def settings(self) -> dict[str, Any]:
        """Everything that defines the cell's result, as stored and hashed."""
        return {
            "kind": self.kind,
            "budget": self.budget,
            "models": {spec.label: {"config": str(spec.train_config), "args": spec.args, "digest": spec.digest}
                       for spec in self.models},
            "attacks": [attack.as_dict(self.seed) for attack in self.attacks],
            "evaluation": self.evaluation,
            "study": self.study,
        }

    @property
    def config_hash(self) -> str:
        return stable_hash(self.settings())


@dataclass(frozen=True)
class Benchmark:
    """A parsed benchmark config: its name, raw (merged) config and expanded cells."""

    name: str
    path: Path
    config: dict[str, Any]
    cells: tuple[Cell, ...]


def dotted_update(assignment: str) -> dict[str, Any]:
    """``evaluation.max_batches=1`` -> ``{"evaluation": {"max_batches": 1}}`` (the value read as YAML)."""
    key, separator, value = assignment.partition("=")
    if not separator or not key or any(not part for part in key.split(".")):
        raise ValueError(f"--set expects KEY.PATH=VALUE, got {assignment!r}")
    update: Any = yaml.safe_load(value)
    for part in reversed(key.split(".")):
        update = {part: update}
    return update


def load_benchmark(path: Path, profiles: Sequence[str] = (), assignments: Sequence[str] = ()) -> Benchmark:
    """Read a benchmark YAML, merge the chosen profiles and then ``--set`` assignments, validate it and
    expand its grid."""
    raw = yaml.safe_load(path.read_text()) or {}
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: a benchmark config must be a mapping")
    available = raw.get("profiles") or {}
    for profile in profiles:
        if profile not in available:
            raise ValueError(f"{path}: unknown profile {profile!r}; profiles: {', '.join(available) or 'none'}")
        raw = deep_merge(raw, available[profile])
    for assignment in assignments:
        raw = deep_merge(raw, dotted_update(assignment))
    config = {key: value for key, value in raw.items() if key != "profiles"}
    check_keys(config, TOP_LEVEL_KEYS | {"profiles"}, str(path))
    name = str(config.get("name") or path.stem)
    return Benchmark(name, path, config, tuple(expand(name, config, str(path))))


def check_keys(section: Mapping[str, Any], allowed: set[str], where: str) -> None:
    unknown = sorted(set(section) - allowed)
    if unknown:
        raise ValueError(f"{where}: unknown keys {unknown}; allowed: {sorted(allowed)}")


def expand(name: str, config: Mapping[str, Any], where: str) -> Iterator[Cell]:
    """The cells of a config, in a deterministic order."""
    seeds = [int(seed) for seed in config.get("seeds", [0])]
    evaluation = dict(config.get("evaluation") or {})
    check_keys(evaluation, EVALUATION_KEYS, f"{where}: evaluation")
    datasets = config.get("datasets") or {}
    if not datasets:
        raise ValueError(f"{where}: 'datasets' must name at least one dataset")
    for dataset, spec in datasets.items():
        at = f"{where}: datasets.{dataset}"
        check_keys(spec, DATASET_KEYS, at)
        if "train" not in spec:
            raise ValueError(f"{at}: 'train' must name a train config")
        train_config = resolve_config(spec["train"], "train")
        shared = {**(config.get("overrides") or {}), **(spec.get("overrides") or {})}
        variants = spec.get("models") or {default_model_label(train_config): {}}
        for seed in seeds:
            models = {
                label: ModelSpec(dataset, label, train_config, tuple(override_args({**shared, **(extra or {})})), seed)
                for label, extra in variants.items()
            }
            yield from attack_cells(name, dataset, models, spec.get("attacks") or {}, seed, evaluation, at)
            if spec.get("transfer"):
                yield from transfer_cells(name, dataset, models, spec["transfer"], seed, evaluation, f"{at}.transfer")
            if spec.get("detection"):
                yield from detection_cells(name, dataset, models, spec["detection"], seed, evaluation,
                                           f"{at}.detection")


def attack_settings(attacks: Mapping[str, Any], where: str, budgets: Sequence[Any] | None = None) -> Iterator[
        tuple[str, str, dict[str, Any], list[float | None]]]:
    """(label, registry name, settings, budgets) for each attack entry of a config section."""
    for label, entry in attacks.items():
        entry = entry or {}
        check_keys(entry, ATTACK_KEYS, f"{where}.{label}")
        attack = entry.get("attack", label)
        try:
            registered = attack_entry(attack)
        except ValueError as error:
            raise ValueError(f"{where}.{label}: {error}") from error
        listed = entry.get("budgets", budgets if budgets is not None else [None])
        parsed = [parse_budget(value, f"{where}.{label}.budgets") for value in listed]
        if registered.budget is None and any(b is not None for b in parsed):
            raise ValueError(f"{where}.{label}: {attack!r} is a minimal-perturbation attack; remove its budgets")
        settings = dict(entry.get("settings") or {})
        for budget in parsed:
            check_attack(attack, budget, settings, f"{where}.{label}")
        yield label, attack, settings, parsed


def budget_settings(settings: Mapping[str, Any], budget: float | None, where: str) -> dict[str, Any]:
    """``settings`` with the values written relative to the budget (``eps/10``) resolved at ``budget``."""
    return {key: scaled_by_budget(value, budget, f"{where}.settings.{key}") for key, value in settings.items()}


def check_attack(name: str, budget: float | None, settings: dict[str, Any], where: str) -> None:
    """Build the attack once, so a bad setting fails when the config loads, naming its key."""
    try:
        build_attack(name, budget, **budget_settings(settings, budget, where))
    except (TypeError, ValueError) as error:
        raise ValueError(f"{where}: {error}") from error


def attack_cells(benchmark: str, dataset: str, models: Mapping[str, ModelSpec], attacks: Mapping[str, Any],
                 seed: int, evaluation: dict[str, Any], where: str) -> Iterator[Cell]:
    for label, spec in models.items():
        for attack_label, attack, settings, budgets in attack_settings(attacks, f"{where}.attacks"):
            for budget in budgets:
                yield Cell(benchmark, "attack", dataset, label, attack_label, budget, seed, (spec,),
                           (AttackSetting(attack_label, attack, settings, budget),), evaluation)


def transfer_cells(benchmark: str, dataset: str, models: Mapping[str, ModelSpec], study: Mapping[str, Any],
                   seed: int, evaluation: dict[str, Any], where: str) -> Iterator[Cell]:
    """One cell per attack and budget: crafted on each source, evaluated on every model of the dataset."""
    check_keys(study, TRANSFER_KEYS, where)
    sources = study.get("sources") or [[label] for label in models]
    for group in sources:
        for label in [group] if isinstance(group, str) else group:
            if label not in models:
                raise ValueError(f"{where}.sources: unknown model {label!r}; models: {list(models)}")
    for attack_label, attack, settings, budgets in attack_settings(study.get("attacks") or {}, f"{where}.attacks",
                                                                   study.get("budgets")):
        for budget in budgets:
            yield Cell(benchmark, "transfer", dataset, "transfer", attack_label, budget, seed,
                       tuple(models.values()), (AttackSetting(attack_label, attack, settings, budget),),
                       evaluation, {"sources": sources})


def detection_cells(benchmark: str, dataset: str, models: Mapping[str, ModelSpec], study: Mapping[str, Any],
                    seed: int, evaluation: dict[str, Any], where: str) -> Iterator[Cell]:
    """One cell per model and budget, holding every attack of the study (detectors train across them)."""
    check_keys(study, DETECTION_KEYS, where)
    attacks = study.get("attacks") or {}
    for label, entry in attacks.items():
        if entry and "budgets" in entry:
            raise ValueError(f"{where}.attacks.{label}: budgets belong to the study ({where}.budgets)")
    listed = study.get("budgets") or [None]
    entries = list(attack_settings(attacks, f"{where}.attacks", listed))
    budgets = [parse_budget(value, f"{where}.budgets") for value in listed]
    for label, spec in models.items():
        for budget in budgets:
            attacks = tuple(AttackSetting(a_label, name, settings, budget) for a_label, name, settings, _ in entries)
            yield Cell(benchmark, "detection", dataset, label, "detection", budget, seed, (spec,), attacks,
                       evaluation, dict(study.get("settings") or {}))


def default_model_label(train_config: Path) -> str:
    """A model label read from a train config: its network name (model_name, encoder_name or backbone)."""
    model = (yaml.safe_load(train_config.read_text()) or {}).get("model", {})
    init_args = model.get("init_args", {}) if isinstance(model, dict) else {}
    for key in ("model_name", "encoder_name", "backbone"):
        if key in init_args:
            return str(init_args[key])
    return "model"


def select_shard(cells: Sequence[Cell], index: int, count: int) -> list[Cell]:
    """The cells of shard ``index`` of ``count``: every count-th cell in key order, so n shards cover a
    grid exactly once whatever order they run in."""
    if count < 1 or not 0 <= index < count:
        raise ValueError(f"--shard must be i/n with 0 <= i < n, got {index}/{count}")
    return [cell for position, cell in enumerate(sorted(cells, key=lambda c: c.key)) if position % count == index]
