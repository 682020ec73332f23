"""Problems found in benchmark and train configs. Each names the file, the dotted key and the value, and a
config's problems are collected (``ProblemLog``) and reported together (``ConfigError``), not one per run."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml

T = TypeVar("T")
MERGE_TAG = "tag:yaml.org,2002:merge"


@dataclass(frozen=True)
class Problem:
    """One bad value: the file it is in, its dotted key ("" for the file as a whole), the value, and what is
    wrong with it (a message that quotes the value)."""

    file: str
    key: str
    value: Any = field(compare=False)  # compared and hashed by the rest: values may be lists or mappings
    message: str = ""

    def __str__(self) -> str:
        return f"{self.file}: {self.key}: {self.message}" if self.key else f"{self.file}: {self.message}"


class ConfigError(ValueError):
    """Every problem found in a benchmark's configs; the message lists one per line."""

    def __init__(self, problems: Sequence[Problem]) -> None:
        self.problems = tuple(problems)
        super().__init__("\n".join(map(str, self.problems)))


class ProblemLog:
    """The problems of one config file, collected instead of raised so that a run reports them all."""

    def __init__(self, file: Path | str) -> None:
        self.file = str(file)
        self.problems: list[Problem] = []

    def __len__(self) -> int:
        return len(self.problems)

    def add(self, key: str, value: Any, message: str) -> None:
        self.problems.append(Problem(self.file, key, value, message))

    @contextmanager
    def at(
        self, key: str, value: Any, errors: tuple[type[Exception], ...] = (ValueError, TypeError, OSError)
    ) -> Iterator[None]:
        """Record an error of the block as a problem of ``key`` (a ``ConfigError``'s problems as they are)
        and leave the block; a message that starts with the key does not repeat it."""
        try:
            yield
        except ConfigError as error:
            self.problems.extend(error.problems)
        except errors as error:
            self.add(key, value, str(error).removeprefix(f"{key}: ") or type(error).__name__)

    def check(self, key: str, value: Any, parse: Callable[[Any], T]) -> T | None:
        """``parse(value)``, or None with a problem of ``key`` when it raises ValueError or TypeError."""
        with self.at(key, value, (ValueError, TypeError)):
            return parse(value)
        return None

    def unknown_keys(self, section: dict[Any, Any], allowed: set[str], key: str) -> None:
        """One problem of ``key`` listing the keys of ``section`` that are not ``allowed``."""
        unknown = sorted(set(section) - allowed, key=str)
        if unknown:
            self.add(key, unknown, f"unknown keys {unknown}; allowed: {sorted(allowed)}")


class ConfigLoader(yaml.SafeLoader):
    """PyYAML's safe loader that refuses a key given twice in one mapping (PyYAML keeps the last silently)
    and reads exponent numbers without a dot (``1e-3``) as floats, as YAML 1.2 does."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        lines: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == MERGE_TAG:
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                first = lines.get(key)
            except TypeError:  # an unhashable key: the base class says so
                break
            if first is not None:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} is given twice (first on line {first + 1})", key_node.start_mark
                )
            lines[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep=deep)


ConfigLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"), list("-+0123456789")
)


def parse_yaml(text: str, where: str) -> Any:
    """YAML text read with ``ConfigLoader``; a syntax error is a ``ConfigError`` naming ``where`` and the line."""
    try:
        return yaml.load(text, Loader=ConfigLoader)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        position = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        context = getattr(error, "context", None)
        context_mark = getattr(error, "context_mark", None)
        detail = getattr(error, "problem", None) or str(error)
        if context and context_mark:
            detail += f" ({context} on line {context_mark.line + 1})"
        raise ConfigError([Problem(where, "", text, f"{position}invalid YAML: {detail}")]) from error


def read_config(path: Path) -> dict[str, Any]:
    """A YAML config file that must hold a mapping; errors (unreadable, bad YAML, not a mapping) name the file."""
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError([Problem(str(path), "", None, f"cannot read the config: {error}")]) from error
    content = parse_yaml(text, str(path))
    if content is None:
        return {}
    if not isinstance(content, dict):
        raise ConfigError([Problem(str(path), "", content, f"must hold a mapping (key: value), got {content!r}")])
    return content
