"""The up-front check of a whole benchmark, run before any training or attack: every config loads and every
value is typed and in range (``grid.read_benchmark``), every attack builds, and every model's train config
(with its overrides) parses as LightningCLI reads it, names a network that exists, points at data files
that exist, and agrees with its datamodule on task, input channels and classes. No network is built.
All problems come back together, each naming its file, dotted key and value."""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.grid import Benchmark, Cell, ModelSpec, read_benchmark
from benchmarks.problems import ConfigError, Problem

ROLES = ("model", "data")
DEFENDED_TASKS = ("classification", "segmentation")  # the task modules with a ``normalize`` step


def timm_model_exists(name: str) -> bool:
    import timm

    return timm.is_model(name)


def smp_encoder_exists(name: str) -> bool:
    """An smp encoder, or ``tu-`` + a timm model (smp's wrapper around timm encoders)."""
    import segmentation_models_pytorch as smp

    return name in smp.encoders.get_encoder_names() or (name.startswith("tu-") and timm_model_exists(name[3:]))


def detector_backbone_exists(name: str) -> bool:
    from lightning_modules.detector import FASTER_RCNN_BACKBONES

    return name in FASTER_RCNN_BACKBONES


@dataclass(frozen=True)
class ModelContract:
    """What a task module's arguments say about its network and data: the argument naming the network (and
    where names are listed), the one giving input channels (None: RGB only), the one giving the classes,
    and the value of that argument which stands for two data classes (a one-logit binary U-Net)."""

    network: str
    exists: Callable[[str], bool]
    listing: str
    channels: str | None
    classes: str
    binary: int | None = None

    def expected_classes(self, data_classes: int) -> set[int]:
        return {data_classes} | ({self.binary} if self.binary is not None and data_classes == 2 else set())


CONTRACTS = {  # by class path; subclasses inherit their base's contract
    "lightning_modules.classifier.ClassifierModule": ModelContract(
        "model_name", timm_model_exists, "timm.list_models()", "in_channels", "num_classes"
    ),
    "lightning_modules.segmenter.SegmenterModule": ModelContract(
        "encoder_name", smp_encoder_exists, "smp.encoders.get_encoder_names()", "in_channels", "classes", binary=1
    ),
    "lightning_modules.detector.DetectorModule": ModelContract(
        "backbone", detector_backbone_exists, "lightning_modules.detector.FASTER_RCNN_BACKBONES", None, "num_classes"
    ),
}


def contract_of(cls: type) -> ModelContract | None:
    for base in cls.__mro__:
        contract = CONTRACTS.get(f"{base.__module__}.{base.__qualname__}")
        if contract is not None:
            return contract
    return None


def validate_benchmark(path: Path, profiles: Sequence[str] = (), assignments: Sequence[str] = ()) -> Benchmark:
    """The benchmark, checked as a whole; a ``ConfigError`` lists every problem found."""
    benchmark, problems = read_benchmark(path, profiles, assignments)
    problems += benchmark_problems(benchmark)
    if problems:
        raise ConfigError(problems)
    return benchmark


def benchmark_problems(benchmark: Benchmark) -> list[Problem]:
    """Problems of the benchmark's models (each train config and overrides checked once, whatever the seed)
    and of its cells' evaluation callbacks."""
    problems: list[Problem] = []
    checked: set[tuple[Path, tuple[str, ...]]] = set()
    for spec in benchmark.models:
        if (spec.train_config, spec.overrides) not in checked:
            checked.add((spec.train_config, spec.overrides))
            problems += ModelCheck(spec, benchmark.path).problems()
    problems += callback_problems(benchmark.cells, benchmark.path)
    return unique(problems)


def unique(problems: Iterable[Problem]) -> list[Problem]:
    """Problems without repeats (two model variants may share a bad train config value), in order."""
    return list(dict.fromkeys(problems))


def callback_problems(cells: Iterable[Cell], path: Path) -> list[Problem]:
    """Build the evaluation callback of each detection cell (cheap: no model), so that its study settings
    are checked by its own constructor; attack and transfer cells take no settings beyond the grid's."""
    from benchmarks.cell_kinds import CELL_KINDS

    problems = []
    for cell in cells:
        if cell.kind != "detection":
            continue
        try:
            CELL_KINDS[cell.kind].callback(cell, {})
        except (ValueError, TypeError) as error:
            problems.append(Problem(str(path), f"datasets.{cell.dataset}.detection.settings", cell.study, str(error)))
    return problems


class ModelCheck:
    """The checks of one model spec: its train config parsed with the overrides, its network name, its
    datamodule built (its own checks, e.g. paths) and its files listed, and model-data agreement."""

    def __init__(self, spec: ModelSpec, benchmark: Path) -> None:
        self.spec = spec
        self.benchmark = benchmark
        self.found: list[Problem] = []

    def problem(self, key: str, value: Any, message: str) -> None:
        """A problem of ``key`` in the file that set it: the benchmark (an override) or the train config."""
        origin = self.spec.origins.get(key)
        if origin is not None:
            self.found.append(Problem(str(self.benchmark), origin, value, message))
        else:
            self.found.append(Problem(str(self.spec.train_config), key, value, message))

    def problems(self) -> list[Problem]:
        from jsonargparse import ArgumentError

        from benchmarks.training import parse_train_config

        try:
            config = parse_train_config(self.spec.train_config, self.spec.args)
        except ArgumentError as error:
            self.problem(*parse_failure(str(error)))
            return self.found
        model, data = (config.get(role) for role in ROLES)
        if model is None or data is None:
            missing = [role for role, section in zip(ROLES, (model, data), strict=True) if section is None]
            self.problem(missing[0], None, "must name a class_path (and init_args)")
            return self.found
        module_class = import_class(model.class_path)
        model_args = init_arguments(model)
        self.check_defence(module_class)
        contract = contract_of(module_class)
        if contract is not None:
            self.check_network(contract, model_args)
        datamodule = self.build_datamodule(data.class_path, init_arguments(data))
        if datamodule is not None:
            self.check_agreement(module_class, contract, model_args, datamodule, data.class_path)
        return self.found

    def check_defence(self, module_class: type) -> None:
        """A ``defence`` goes in front of the module's ``normalize`` step, which detectors lack."""
        defence = self.spec.defence
        if defence is not None and getattr(module_class, "task", None) not in DEFENDED_TASKS:
            key = f"datasets.{self.spec.dataset}.models.{self.spec.label}.defence"
            message = f"input defences wrap classifiers and segmenters, not {module_class.__name__}"
            self.found.append(Problem(str(self.benchmark), key, defence.as_dict(), message))

    def check_network(self, contract: ModelContract, model_args: Mapping[str, Any]) -> None:
        name = model_args.get(contract.network)
        if not (isinstance(name, str) and contract.exists(name)):
            self.problem(
                f"model.init_args.{contract.network}", name, f"{name!r} is not a known network (see {contract.listing})"
            )

    def build_datamodule(self, class_path: str, init_args: dict[str, Any]) -> Any:
        """The datamodule (its constructor checks its arguments and paths) with its files listed when it reads
        any (a ``root`` argument); None after a problem."""
        root = init_args.get("root")
        if root is not None and not Path(root).exists():
            where = "" if Path(root).is_absolute() else f" (relative to {Path.cwd()})"
            self.problem("data.init_args.root", root, f"{str(root)!r} does not exist{where}")
            return None
        try:
            datamodule = import_class(class_path)(**init_args)
        except Exception as error:  # the datamodule's own checks of its arguments and paths
            named = re.match(r"\w+", str(error))  # "size must be positive, got -3" blames size
            argument = named[0] if named and named[0] in init_args else "root" if isinstance(error, OSError) else ""
            if argument in init_args:
                self.problem(f"data.init_args.{argument}", init_args[argument], str(error))
            else:
                self.problem("data.class_path", class_path, f"{class_path} refuses its arguments: {error}")
            return None
        if root is not None:
            try:
                splits = datamodule.build_splits()
            except Exception as error:  # missing, unreadable or inconsistent files
                self.problem("data.init_args.root", root, f"cannot list the data: {error}")
                return None
            empty = [split for split in ("train", "test") if not splits.get(split)]  # no val split: no validation
            if empty:
                self.problem("data.init_args.root", root, f"the {' and '.join(empty)} split of {str(root)!r} is empty")
        return datamodule

    def check_agreement(
        self,
        module_class: type,
        contract: ModelContract | None,
        model_args: Mapping[str, Any],
        datamodule: Any,
        data_class: str,
    ) -> None:
        """The model and its datamodule: the same task, the datamodule's channels as the model's input, and
        as many classes (a binary U-Net has one output)."""
        model_task, data_task = getattr(module_class, "task", None), getattr(datamodule, "task", None)
        if model_task and data_task and model_task != data_task:
            key = "data.class_path" if "data.class_path" in self.spec.origins else "model.class_path"
            self.problem(
                key,
                data_class if key == "data.class_path" else module_class.__name__,
                f"{module_class.__name__} is a {model_task} model but {data_class} holds {data_task} data",
            )
            return
        if contract is None:
            return
        channels = getattr(datamodule, "in_channels", None)
        model_channels = model_args.get(contract.channels, 3) if contract.channels else 3
        if channels is not None and channels != model_channels:
            key = f"model.init_args.{contract.channels}" if contract.channels else "data.init_args.channels"
            self.problem(
                key,
                model_channels if contract.channels else channels,
                f"the model takes {model_channels}-channel images but the datamodule gives {channels} "
                f"(data.init_args.channels); set both to the same value",
            )
        classes = getattr(datamodule, "num_classes", None)
        model_classes = model_args.get(contract.classes)
        if isinstance(classes, int) and model_classes not in contract.expected_classes(classes):
            expected = " or ".join(map(str, sorted(contract.expected_classes(classes))))
            self.problem(
                f"model.init_args.{contract.classes}",
                model_classes,
                f"the datamodule has {classes} classes, so {contract.classes} must be {expected}, "
                f"got {model_classes!r}",
            )


def init_arguments(section: Any) -> dict[str, Any]:
    """The init_args of a parsed ``model`` or ``data`` section (none for a class without arguments)."""
    arguments = section.get("init_args")
    return arguments.as_dict() if arguments is not None else {}


def import_class(class_path: str) -> type:
    module, _, name = class_path.rpartition(".")
    return getattr(importlib.import_module(module), name)


def parse_failure(text: str) -> tuple[str, Any, str]:
    """(dotted key, value, message) of a LightningCLI (jsonargparse) parse error, whose text nests the
    failure of an init argument inside the failure of its class."""
    if text.startswith("unrecognized arguments:"):
        key, _, value = text.split(":", 1)[1].split()[0].lstrip("-").partition("=")
        return key, value, "is not an argument of the train config's classes or of the Trainer"
    keys = re.findall(r'Parser key "([^"]+)"', text)
    values = re.findall(r"(?:Got value|Given value): (.*)", text)
    value: Any = values[0] if values else None
    top = keys[0] if keys else ""
    if top in ROLES:
        class_path = re.search(r"class_path '([^']+)'", text)
        owner = class_path[1] if class_path else top
        option = re.search(r"Option '([^']+)' is not accepted", text)
        nested = re.search(r"NestedArg\(key='([^']*)', val=(.*)\)\s*$", text)
        value = nested[2] if nested else value
        if option:
            return f"{top}.init_args.{option[1]}", value, f"{owner} takes no argument {option[1]!r}"
        if len(keys) > 1:
            inner = text[text.index(f'Parser key "{keys[1]}"') :]
            return f"{top}.init_args.{keys[1]}", value, f"{owner} expects {expected_types(inner, 6)}, got {value}"
        reason = re.search(r"class_path '[^']+':\s*\n\s*(.+)", text)
        return f"{top}.class_path", owner, f"cannot use {owner!r}: {reason[1] if reason else text}"
    if top:
        return top, value, f"expects {expected_types(text, 0)}, got {value}"
    return "", None, " ".join(text.split())


def expected_types(text: str, indent: int) -> str:
    """The types an error text lists as expected, at ``indent`` spaces or deeper, ``null`` for None."""
    found = re.findall(rf"^ {{{indent},}}(?:- )?Expected a <class '(\w+)'>", text, flags=re.MULTILINE)
    names = ["null" if name == "NoneType" else name for name in dict.fromkeys(found)]
    return " or ".join(names) or "another value"
