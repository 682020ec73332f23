"""Benchmark configs: a YAML grid of datasets x models x attacks x budgets x seeds, expanded into cells.

A config names train configs (``benchmarks/configs/train``) for its datasets, model variants as
LightningCLI overrides, attacks by registry name with settings and budgets, and optional ``transfer``
and ``detection`` studies. ``profiles`` hold deep-merged variants (``real`` data, ``reduced`` size)
chosen with ``medadv run --profile``. docs/benchmarks.md describes every key. Every value is checked as
the config loads (type, range, names; each attack is built once), and all problems are reported together
as one ``ConfigError`` naming the file, the dotted key and the value.
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from attacks.adaptive import ADAPTIVE_METHODS, EOT_DRAWS, AdaptiveAttack
from attacks.base import Attack
from attacks.budgets import budget_label, parse_budget, scaled_by_budget
from attacks.precision import check_precision
from attacks.registry import AttackEntry, attack_entry, build_attack
from benchmarks.problems import ConfigError, Problem, ProblemLog, parse_yaml, read_config
from callbacks.analysis import check_analysis
from callbacks.batch_size import check_attack_batch_size

CONFIG_DIR = Path(__file__).resolve().parent / "configs"
TOP_LEVEL_KEYS = {"name", "description", "seeds", "evaluation", "overrides", "datasets", "profiles"}
DATASET_KEYS = {"train", "overrides", "models", "attacks", "transfer", "detection"}
ATTACK_KEYS = {"attack", "budgets", "settings", "adaptive", "models"}
ADAPTIVE_KEYS = {"method", "draws"}
DEFENCE_KEY = "defence"  # the one key of a model variant that is not a LightningCLI override
EVALUATION_KEYS = {
    "max_batches", "examples", "brisque", "precision", "channels_last", "compile", "attack_batch_size",
    "robust_accuracy_only", "analysis",
}
TRANSFER_KEYS = {"attacks", "budgets", "sources"}
DETECTION_KEYS = {"attacks", "budgets", "settings", "models"}
MAX_SEED = 2**32 - 1  # the largest seed Lightning's seed_everything accepts
DetectionStudy = tuple[list["ConfiguredAttack"], list[float | None], dict[str, Any], tuple[str, ...]]
UNSAFE_IN_LABEL = re.compile(r"[/\\\x00-\x1f\x7f]")  # labels become parts of cell keys and folder names


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
    drop a model, an attack or an override; a null under a key that ``base`` lacks adds nothing), everything
    else is replaced."""
    merged = copy.deepcopy(dict(base))
    for key, value in update.items():
        if value is None:
            merged.pop(key, None)
        elif isinstance(value, Mapping):
            merged[key] = deep_merge(merged[key] if isinstance(merged.get(key), Mapping) else {}, value)
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
class DefenceSetting:
    """An input-transformation defence of a model variant: its name in ``lightning_modules.DEFENCES`` and
    settings, put in front of the trained network at evaluation (``with_defence``)."""

    name: str
    settings: tuple[tuple[str, Any], ...] = ()

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, **dict(self.settings)}

    def apply(self, module: Any) -> Any:
        """``module`` behind this defence (a copy; ``lightning_modules.defences.with_defence``)."""
        from lightning_modules.defences import with_defence

        return with_defence(module, self.name, **dict(self.settings))


@dataclass(frozen=True)
class ModelSpec:
    """One model to train or load: a train config plus overrides and seed; ``digest`` keys its checkpoint
    (the ``defence``, applied after training, is not part of it, so defended variants share the weights).
    ``origins`` maps each override key to the benchmark config key that set it, for messages."""

    dataset: str
    label: str
    train_config: Path
    overrides: tuple[str, ...]
    seed: int
    origins: Mapping[str, str] = field(default_factory=dict, compare=False, hash=False, repr=False)
    defence: DefenceSetting | None = None

    @property
    def args(self) -> list[str]:
        return [*self.overrides, f"--seed_everything={self.seed}"]

    @property
    def digest(self) -> str:
        return stable_hash({"config": self.train_config.read_text(), "args": self.args})

    def evaluated(self, module: Any) -> Any:
        """The trained ``module`` as the cells evaluate it: behind its ``defence``, if any."""
        return module if self.defence is None else self.defence.apply(module)


@dataclass(frozen=True)
class AttackSetting:
    """An attack as a config names it: label (metric name), registry name, settings, one budget, and the
    adaptive wrapper it runs in (``{"method": "bpda" | "eot" | "bpda_eot", "draws": n}``), if any."""

    label: str
    name: str
    settings: dict[str, Any]
    budget: float | None
    adaptive: dict[str, Any] | None = None

    def as_dict(self, seed: int) -> dict[str, Any]:
        """Label, name, budget and the built attack's full settings (``Attack.settings``) at ``seed``."""
        return {"label": self.label, "name": self.name, "budget": self.budget, "settings": self.build(seed).settings}

    def build(self, seed: int, budget: float | None = None) -> Attack:
        """The registry attack at ``budget`` (default: this setting's), seeded with ``seed`` unless its
        settings name a seed; settings relative to the budget (``alpha: eps/10``) are resolved at it."""
        budget = self.budget if budget is None else budget
        attack = build_attack(self.name, budget, **{"seed": seed, **budget_settings(self.settings, budget, self.label)})
        return attack if self.adaptive is None else AdaptiveAttack(attack, **self.adaptive)


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
            "models": {
                spec.label: {"config": str(spec.train_config), "args": spec.args, "digest": spec.digest}
                | ({DEFENCE_KEY: spec.defence.as_dict()} if spec.defence else {})
                for spec in self.models
            },
            "attacks": [attack.as_dict(self.seed) for attack in self.attacks],
            "evaluation": self.evaluation,
            "study": self.study,
        }

    @property
    def config_hash(self) -> str:
        return stable_hash(self.settings())


@dataclass(frozen=True)
class Benchmark:
    """A parsed benchmark config: its name, raw (merged) config, expanded cells and every model they use."""

    name: str
    path: Path
    config: dict[str, Any]
    cells: tuple[Cell, ...]
    models: tuple[ModelSpec, ...] = ()


def dotted_update(assignment: str) -> dict[str, Any]:
    """``evaluation.max_batches=1`` -> ``{"evaluation": {"max_batches": 1}}`` (the value read as YAML)."""
    key, separator, value = assignment.partition("=")
    if not separator or not key or any(not part for part in key.split(".")):
        raise ValueError(f"--set expects KEY.PATH=VALUE, got {assignment!r}")
    update: Any = parse_yaml(value, f"--set {assignment}")
    for part in reversed(key.split(".")):
        update = {part: update}
    return update


def load_benchmark(path: Path, profiles: Sequence[str] = (), assignments: Sequence[str] = ()) -> Benchmark:
    """Read a benchmark YAML, merge the chosen profiles and then ``--set`` assignments, validate it and
    expand its grid; a ``ConfigError`` lists every problem."""
    benchmark, problems = read_benchmark(path, profiles, assignments)
    if problems:
        raise ConfigError(problems)
    return benchmark


def read_benchmark(
    path: Path, profiles: Sequence[str] = (), assignments: Sequence[str] = ()
) -> tuple[Benchmark, list[Problem]]:
    """The benchmark and every problem of its merged config; its cells leave out what a problem touches.
    Raises ``ConfigError`` only when the file itself cannot be read as a YAML mapping."""
    raw = read_config(path)
    log = ProblemLog(path)
    available = log.check("profiles", raw.get("profiles"), mapping) or {}
    for profile in profiles:
        if profile not in available:
            log.add("profiles", profile, f"unknown profile {profile!r}; profiles: {', '.join(available) or 'none'}")
            continue
        chosen = log.check(f"profiles.{profile}", available[profile], mapping)
        raw = deep_merge(raw, chosen or {})
    for assignment in assignments:
        with log.at("--set", assignment):
            raw = deep_merge(raw, dotted_update(assignment))
    config = {key: value for key, value in raw.items() if key != "profiles"}
    log.unknown_keys(config, TOP_LEVEL_KEYS | {"profiles"}, "")
    if config.get("description") is not None and not isinstance(config["description"], str):
        log.add("description", config["description"], f"must be text, got {config['description']!r}")
    name = path.stem if config.get("name") is None else log.check("name", config["name"], label) or path.stem
    cells, models = expand(name, config, log)
    for key, count in Counter(cell.key for cell in cells).items():
        if count > 1:
            log.add(
                f"datasets.{key.split('/')[1]}",
                key,
                f"{count} cells share the key {key!r} (a model labelled "
                "'transfer' or an attack labelled 'detection' collides with a study's cells)",
            )
    return Benchmark(name, path, config, tuple(cells), tuple(models)), log.problems


def label(value: Any) -> str:
    """A label (benchmark, dataset, model, attack): it becomes part of cell keys and folder names, so a
    non-empty string without slashes, backslashes, control characters or surrounding spaces."""
    if not isinstance(value, str):
        raise ValueError(f"must be a name (a string; quote it in YAML), got {value!r}")
    if value.strip() != value or value in ("", ".", "..") or UNSAFE_IN_LABEL.search(value):
        raise ValueError(f"must be a name without '/', '\\', control characters or surrounding spaces, got {value!r}")
    return value


def mapping(value: Any) -> dict[str, Any]:
    """A section that must be a mapping with string keys; null is an empty one."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ValueError(f"must be a mapping (key: value), got {value!r}")
    for key in value:
        if not isinstance(key, str):
            raise ValueError(f"keys must be names (strings; quote them in YAML), got {key!r}")
    return dict(value)


def integer(value: Any, minimum: int, maximum: int | None = None) -> int:
    """``value`` when it is an integer (not a bool) in [minimum, maximum]."""
    if (
        isinstance(value, bool)
        or not isinstance(value, int)
        or value < minimum
        or (maximum is not None and value > maximum)
    ):
        bound = f">= {minimum}" if maximum is None else f"in [{minimum}, {maximum}]"
        raise ValueError(f"must be an integer {bound}, got {value!r}")
    return value


def flag(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"must be true or false, got {value!r}")
    return value


def seed_list(value: Any) -> list[int]:
    """Seeds: a non-empty list of distinct integers in [0, 2**32 - 1]."""
    if not isinstance(value, list) or not value:
        raise ValueError(f"must be a non-empty list of integer seeds such as [0, 1], got {value!r}")
    for seed in value:
        if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
            raise ValueError(f"must list integers in [0, {MAX_SEED}], got {seed!r} in {value!r}")
    repeated = [seed for seed, count in Counter(value).items() if count > 1]
    if repeated:
        raise ValueError(f"lists seed {repeated[0]} more than once: {value!r}")
    return value


def budget_list(value: Any, key: str) -> list[float | None]:
    """Budgets: a non-empty list of distinct budgets (numbers, fractions such as 8/255, null or min)."""
    if not isinstance(value, list) or not value:
        raise ValueError(f"must be a non-empty list of budgets such as [2/255, 8/255], got {value!r}")
    budgets = [parse_budget(item, key) for item in value]
    repeated = [budget for budget, count in Counter(budgets).items() if count > 1]
    if repeated:
        raise ValueError(f"lists budget {budget_label(repeated[0])} more than once: {value!r}")
    return budgets


def registered_attack(name: Any) -> AttackEntry:
    """The registry entry of an attack name or import path."""
    if not isinstance(name, str):
        raise ValueError(f"attack must be a registry name or import path, got {name!r}")
    return attack_entry(name)


def evaluation_settings(value: Any, log: ProblemLog) -> dict[str, Any]:
    """The ``evaluation`` block as written (it is part of every cell's hash); its values are checked."""
    evaluation = log.check("evaluation", value, mapping) or {}
    log.unknown_keys(evaluation, EVALUATION_KEYS, "evaluation")
    if evaluation.get("max_batches") is not None:
        log.check("evaluation.max_batches", evaluation["max_batches"], lambda v: integer(v, 1))
    if "examples" in evaluation:
        log.check("evaluation.examples", evaluation["examples"], lambda v: integer(v, 0))
    if "brisque" in evaluation:
        log.check("evaluation.brisque", evaluation["brisque"], flag)
    if "precision" in evaluation:
        log.check("evaluation.precision", evaluation["precision"], check_precision)
    for key in ("channels_last", "compile", "robust_accuracy_only"):  # channels_last null: the callback's default
        if evaluation.get(key) is not None:
            log.check(f"evaluation.{key}", evaluation[key], flag)
    if "attack_batch_size" in evaluation:
        log.check("evaluation.attack_batch_size", evaluation["attack_batch_size"], check_attack_batch_size)
    if evaluation.get("analysis") is not None:
        log.check("evaluation.analysis", evaluation["analysis"], check_analysis)
    return evaluation


def expand(name: str, config: Mapping[str, Any], log: ProblemLog) -> tuple[list[Cell], list[ModelSpec]]:
    """The cells of a config in a deterministic order and the models they use; problems go to ``log``."""
    seeds = log.check("seeds", config.get("seeds", [0]), seed_list) or [0]  # seed 0 still checks the rest
    evaluation = evaluation_settings(config.get("evaluation"), log)
    shared = log.check("overrides", config.get("overrides"), mapping) or {}
    datasets = log.check("datasets", config.get("datasets"), mapping)
    if datasets == {}:
        log.add("datasets", config.get("datasets"), "must name at least one dataset")
    cells: list[Cell] = []
    models: list[ModelSpec] = []
    for dataset, spec in (datasets or {}).items():
        grid = DatasetGrid(name, dataset, f"datasets.{dataset}", log)
        grid.read(spec, shared)
        for seed in seeds:
            models += grid.models(seed).values()
            cells += grid.cells(seed, evaluation)
    return cells, models


@dataclass(frozen=True)
class ConfiguredAttack:
    """An attack entry of a config, checked: label, registry name, settings, its budgets, its adaptive
    wrapper, and the model labels it attacks (empty: every model of the dataset)."""

    label: str
    name: str
    settings: dict[str, Any]
    budgets: tuple[float | None, ...]
    adaptive: dict[str, Any] | None = None
    models: tuple[str, ...] = ()

    def at(self, budget: float | None) -> AttackSetting:
        return AttackSetting(self.label, self.name, self.settings, budget, self.adaptive)

    def attacks(self, model: str) -> bool:
        return not self.models or model in self.models


class DatasetGrid:
    """One dataset entry of a config: its train config, model variants, attacks and studies, checked once
    and then expanded per seed."""

    def __init__(self, benchmark: str, dataset: str, where: str, log: ProblemLog) -> None:
        self.benchmark = benchmark
        self.dataset = dataset
        self.where = where
        self.log = log
        self.train_config: Path | None = None
        self.variants: dict[str, tuple[dict[str, Any], dict[str, str]]] = {}
        self.defences: dict[str, DefenceSetting] = {}
        self.rejected: set[str] = set()  # model labels whose entry has a problem: known, but without cells
        self.attacks: list[ConfiguredAttack] = []
        self.transfer: tuple[list[ConfiguredAttack], list[Any]] | None = None
        self.detection: DetectionStudy | None = None

    def read(self, spec: Any, shared: Mapping[str, Any]) -> None:
        """Check the entry, keeping its valid models, attacks and studies."""
        log, where = self.log, self.where
        if log.check(where, self.dataset, label) is None:
            return
        spec = log.check(where, spec, mapping)
        if spec is None:
            return
        log.unknown_keys(spec, DATASET_KEYS, where)
        self.train_config = self.read_train_config(spec.get("train"))
        own = log.check(f"{where}.overrides", spec.get("overrides"), mapping)
        variants = log.check(f"{where}.models", spec.get("models"), mapping)
        if self.train_config is not None and own is not None and variants is not None:
            self.read_variants(variants, shared, own)
        self.attacks = self.attack_entries(spec.get("attacks"), f"{where}.attacks")
        if spec.get("transfer") is not None:
            self.transfer = self.transfer_study(spec["transfer"], f"{where}.transfer")
        if spec.get("detection") is not None:
            self.detection = self.detection_study(spec["detection"], f"{where}.detection")
        if not (spec.get("attacks") or spec.get("transfer") or spec.get("detection")):
            log.add(where, self.dataset, "runs nothing: give it attacks, a transfer study or a detection study")

    def read_train_config(self, train: Any) -> Path | None:
        key = f"{self.where}.train"
        if train is None:
            self.log.add(key, None, "'train' must name a train config")
            return None
        if not isinstance(train, str):
            self.log.add(key, train, f"must name a train config (a name or a path), got {train!r}")
            return None
        with self.log.at(key, train):
            path = resolve_config(train, "train")
            read_config(path)
            return path
        return None

    def read_variants(self, variants: dict[str, Any], shared: Mapping[str, Any], own: Mapping[str, Any]) -> None:
        """Model label -> (its LightningCLI overrides, the config key of each); one unnamed model by default."""
        origins = {key: f"overrides.{key}" for key in shared} | {key: f"{self.where}.overrides.{key}" for key in own}
        if not variants:
            with self.log.at(f"{self.where}.train", str(self.train_config)):
                variants = {default_model_label(self.train_config): {}}
        for model, extra in variants.items():
            at = f"{self.where}.models.{model}"
            if self.log.check(at, model, label) is None:
                continue
            extra = self.log.check(at, extra, mapping)
            if extra is None:
                continue
            if DEFENCE_KEY in extra:
                extra = dict(extra)
                defence = self.log.check(f"{at}.{DEFENCE_KEY}", extra.pop(DEFENCE_KEY), defence_setting)
                if defence is None:
                    self.rejected.add(model)
                    continue
                self.defences[model] = defence
            self.variants[model] = ({**shared, **own, **extra}, origins | {key: f"{at}.{key}" for key in extra})

    def models(self, seed: int) -> dict[str, ModelSpec]:
        return {
            model: ModelSpec(
                self.dataset, model, self.train_config, tuple(override_args(overrides)), seed, origins,
                self.defences.get(model),
            )
            for model, (overrides, origins) in self.variants.items()
        }

    def cells(self, seed: int, evaluation: dict[str, Any]) -> Iterator[Cell]:
        """The dataset's cells at ``seed``: attack cells, then the transfer and detection studies' cells."""
        models = self.models(seed)
        common = {"benchmark": self.benchmark, "dataset": self.dataset, "seed": seed, "evaluation": evaluation}
        for model, spec in models.items():
            for attack in (attack for attack in self.attacks if attack.attacks(model)):
                for budget in attack.budgets:
                    yield Cell(
                        kind="attack",
                        model=model,
                        attack=attack.label,
                        budget=budget,
                        models=(spec,),
                        attacks=(attack.at(budget),),
                        **common,
                    )
        if self.transfer is not None:
            attacks, sources = self.transfer
            study = {"sources": sources or [[model] for model in models]}
            for attack in attacks:
                for budget in attack.budgets:
                    yield Cell(
                        kind="transfer",
                        model="transfer",
                        attack=attack.label,
                        budget=budget,
                        models=tuple(models.values()),
                        attacks=(attack.at(budget),),
                        study=study,
                        **common,
                    )
        if self.detection is not None:
            attacks, budgets, settings, chosen = self.detection
            for model, spec in models.items():
                if chosen and model not in chosen:
                    continue
                for budget in budgets:
                    yield Cell(
                        kind="detection",
                        model=model,
                        attack="detection",
                        budget=budget,
                        models=(spec,),
                        attacks=tuple(attack.at(budget) for attack in attacks),
                        study=dict(settings),
                        **common,
                    )

    def attack_entries(
        self, section: Any, where: str, budgets: Sequence[float | None] | None = None, study: str | None = None
    ) -> list[ConfiguredAttack]:
        """The valid entries of an attacks section (label -> {attack, budgets, settings}); entries without
        budgets take ``budgets`` (default [null]); in a detection ``study`` the study's budgets are the only ones."""
        log = self.log
        entries = log.check(where, section, mapping) or {}
        configured = []
        for name, entry in entries.items():
            at = f"{where}.{name}"
            found = len(log)
            log.check(at, name, label)
            entry = log.check(at, entry, mapping)
            if entry is None:
                continue
            log.unknown_keys(entry, ATTACK_KEYS, at)
            attack = entry.get("attack", name)
            registered = log.check(at, attack, registered_attack)
            listed = list(budgets or [None])
            if "budgets" in entry and study is not None:
                log.add(f"{at}.budgets", entry["budgets"], f"budgets belong to the study ({study}.budgets)")
            elif "budgets" in entry:
                listed = log.check(
                    f"{at}.budgets", entry["budgets"], lambda v, key=f"{at}.budgets": budget_list(v, key)
                )
            settings = log.check(f"{at}.settings", entry.get("settings"), mapping)
            adaptive = log.check(f"{at}.adaptive", entry.get("adaptive"), adaptive_setting)
            models = self.attacked_models(entry, at, where)
            if len(log) == found:
                self.check_attack(at, attack, registered, listed, settings)
            if len(log) == found:
                configured.append(ConfiguredAttack(name, attack, settings, tuple(listed), adaptive, models))
        return configured

    def attacked_models(self, entry: dict[str, Any], at: str, where: str) -> tuple[str, ...]:
        """The checked ``models`` of an attack entry (a list of model labels; only the dataset's own attacks
        take one), and that a BPDA entry attacks only models with a ``defence`` (BPDA approximates it)."""
        models = entry.get("models")
        if models is not None and where != f"{self.where}.attacks":
            self.log.add(f"{at}.models", models, "only the dataset's attacks choose models; studies attack all")
            return ()
        if models is not None:
            models = self.log.check(f"{at}.models", models, self.model_labels)
        attacked = models or list(self.variants)
        adaptive = entry.get("adaptive")
        method = adaptive.get("method") if isinstance(adaptive, dict) else adaptive
        undefended = [model for model in attacked if model in self.variants and model not in self.defences]
        if isinstance(method, str) and "bpda" in method and undefended:
            self.log.add(
                f"{at}.adaptive", adaptive,
                f"BPDA approximates a model's input defence, but {undefended} have no 'defence'; "
                "list the defended models under 'models'",
            )
        return tuple(models or ())

    def model_labels(self, value: Any) -> list[str]:
        """A non-empty list of this dataset's model labels."""
        if not isinstance(value, list) or not value or not all(isinstance(model, str) for model in value):
            raise ValueError(f"must be a non-empty list of model labels, got {value!r}")
        unknown = [model for model in value if self.variants and model not in {*self.variants, *self.rejected}]
        if unknown:
            raise ValueError(f"unknown models {unknown}; models: {list(self.variants)}")
        return value

    def check_attack(
        self, at: str, attack: str, registered: AttackEntry, budgets: list[float | None], settings: dict[str, Any]
    ) -> None:
        """Build the attack at each budget (until one fails), so that a bad setting is a problem of the
        config, not of a cell (any error of the constructor is a bad setting). Without a budget, an attack
        whose budget argument then takes a default value would run at that value under the label ``min``."""
        if registered.budget is None and any(budget is not None for budget in budgets):
            self.log.add(at, attack, f"{attack!r} is a minimal-perturbation attack; remove its budgets")
            return
        if registered.budget in settings:
            self.log.add(
                f"{at}.settings.{registered.budget}",
                settings[registered.budget],
                f"{attack!r} takes its {registered.budget} from the budgets; remove it from settings",
            )
            return
        found = len(self.log)
        for budget in budgets:
            resolved = {}
            for key, value in settings.items():
                with self.log.at(f"{at}.settings.{key}", value):
                    resolved[key] = scaled_by_budget(value, budget, f"{at}.settings.{key}")
            if len(self.log) > found:
                return
            with self.log.at(at, settings, (Exception,)):
                default = build_attack(attack, budget, **resolved).settings.get(registered.budget or "")
                if budget is None and default is not None:
                    raise ValueError(
                        f"{attack!r} needs budgets (without one its {registered.budget} would be {default:.4g} under "
                        "the label 'min'), e.g. budgets: [8/255]; null and min are for attacks without a bound"
                    )
            if len(self.log) > found:
                return

    def transfer_study(self, section: Any, where: str) -> tuple[list[ConfiguredAttack], list[Any]] | None:
        """(attacks, sources) of a transfer study; sources [] stands for each model alone."""
        study = self.log.check(where, section, mapping)
        if study is None:
            return None
        self.log.unknown_keys(study, TRANSFER_KEYS, where)
        found = len(self.log)
        budgets = self.study_budgets(study, where)
        if len(self.log) > found:  # the attacks would be checked at no budget
            return None
        sources = study.get("sources") or []
        self.log.check(f"{where}.sources", sources, self.source_groups)
        attacks = self.study_attacks(study, where, budgets)
        return attacks, sources

    def source_groups(self, sources: Any) -> list[Any]:
        """Transfer sources: model labels, or lists of labels (an ensemble)."""
        if not isinstance(sources, list):
            raise ValueError(f"must be a list of model labels or lists of them, got {sources!r}")
        for group in sources:
            members = [group] if isinstance(group, str) else group
            if not isinstance(members, list) or not members:
                raise ValueError(f"each source must be a model label or a non-empty list of them, got {group!r}")
            for model in members:
                if self.variants and model not in self.variants:  # no variants: the train config has a problem
                    raise ValueError(f"unknown model {model!r}; models: {list(self.variants)}")
        return sources

    def detection_study(self, section: Any, where: str) -> DetectionStudy | None:
        """(attacks, budgets, callback settings, models) of a detection study; every attack runs at each budget
        on each of its ``models`` (default: every model of the dataset)."""
        study = self.log.check(where, section, mapping)
        if study is None:
            return None
        self.log.unknown_keys(study, DETECTION_KEYS, where)
        found = len(self.log)
        budgets = self.study_budgets(study, where) or [None]
        if len(self.log) > found:
            return None
        attacks = self.study_attacks(study, where, budgets, detection=True)
        settings = self.log.check(f"{where}.settings", study.get("settings"), mapping) or {}
        models = study.get("models")
        if models is not None:
            models = self.log.check(f"{where}.models", models, self.model_labels)
        return attacks, budgets, settings, tuple(models or ())

    def study_budgets(self, study: dict[str, Any], where: str) -> list[float | None] | None:
        """A study's budgets, None when it lists none."""
        if study.get("budgets") is None:
            return None
        return self.log.check(f"{where}.budgets", study["budgets"], lambda v: budget_list(v, f"{where}.budgets"))

    def study_attacks(
        self, study: dict[str, Any], where: str, budgets: list[float | None] | None, detection: bool = False
    ) -> list[ConfiguredAttack]:
        """A study's attacks (at least one); in a detection study only the study lists budgets."""
        found = len(self.log)
        attacks = self.attack_entries(study.get("attacks"), f"{where}.attacks", budgets, where if detection else None)
        if not attacks and len(self.log) == found:
            self.log.add(f"{where}.attacks", study.get("attacks"), "must list at least one attack")
        return attacks


def adaptive_setting(value: Any) -> dict[str, Any] | None:
    """An attack's ``adaptive`` entry: null, a method (``bpda``, ``eot``, ``bpda_eot``) or a mapping
    ``{method: eot, draws: 10}``; as keyword arguments of ``attacks.adaptive.AdaptiveAttack``."""
    if value is None:
        return None
    entry = {"method": value} if isinstance(value, str) else mapping(value)
    unknown = sorted(set(entry) - ADAPTIVE_KEYS)
    if unknown:
        raise ValueError(f"unknown keys {unknown}; allowed: {sorted(ADAPTIVE_KEYS)}")
    if entry.get("method") not in ADAPTIVE_METHODS:
        raise ValueError(f"method must be one of {list(ADAPTIVE_METHODS)}, got {entry.get('method')!r}")
    if "draws" in entry and "eot" not in entry["method"]:
        raise ValueError(f"draws are EOT's; {entry['method']!r} takes none")
    if "eot" in entry["method"]:
        entry["draws"] = integer(entry.get("draws", EOT_DRAWS), 1)
    return entry


def defence_setting(value: Any) -> DefenceSetting:
    """A model's ``defence``: a name in ``lightning_modules.DEFENCES``, or ``{name: jpeg, quality: 75}``;
    the transform is built once here, so a bad name or setting is a problem of the config."""
    from lightning_modules.defences import build_transform

    entry = {"name": value} if isinstance(value, str) else mapping(value)
    name = entry.pop("name", None)
    if not isinstance(name, str):
        raise ValueError(f"must name a defence (name: jpeg, plus its settings), got {value!r}")
    build_transform(name, **entry)
    return DefenceSetting(name, tuple(sorted(entry.items())))


def budget_settings(settings: Mapping[str, Any], budget: float | None, where: str) -> dict[str, Any]:
    """``settings`` with the values written relative to the budget (``eps/10``) resolved at ``budget``."""
    return {key: scaled_by_budget(value, budget, f"{where}.settings.{key}") for key, value in settings.items()}


def default_model_label(train_config: Path) -> str:
    """A model label read from a train config: its network name (model_name, encoder_name or backbone)."""
    model = read_config(train_config).get("model", {})
    init_args = model.get("init_args", {}) if isinstance(model, dict) else {}
    for key in ("model_name", "encoder_name", "backbone"):
        if isinstance(init_args, dict) and key in init_args:
            return str(init_args[key])
    return "model"


def select_shard(cells: Sequence[Cell], index: int, count: int) -> list[Cell]:
    """The cells of shard ``index`` of ``count``: every count-th cell in key order, so n shards cover a
    grid exactly once whatever order they run in."""
    if count < 1 or not 0 <= index < count:
        raise ValueError(f"--shard must be i/n with 0 <= i < n, got {index}/{count}")
    return [cell for position, cell in enumerate(sorted(cells, key=lambda c: c.key)) if position % count == index]
