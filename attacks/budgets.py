"""Perturbation budgets as people write them (``8/255``, ``0.05``, ``min``) and as metric names carry them
(``8_255``): parsed and printed here only, for configs, the evaluation callback, tables and reports."""

from __future__ import annotations

import math
from typing import Any

MINIMAL = "min"


def parse_budget(value: Any, where: str) -> float | None:
    """A budget from a config: a number, a fraction string such as ``8/255``, or null / ``min`` for
    minimal-norm attacks; ValueError naming ``where`` for anything else (NaN, infinities, negatives)."""
    if value is None or value == MINIMAL:
        return None
    if isinstance(value, bool):
        raise ValueError(f"{where}: budget {value!r} is neither a number nor a fraction like 8/255")
    try:
        numerator, _, denominator = str(value).replace(" ", "").partition("/")
        budget = float(numerator) / float(denominator or 1)
    except (ValueError, ZeroDivisionError) as error:
        raise ValueError(f"{where}: budget {value!r} is neither a number nor a fraction like 8/255") from error
    if not math.isfinite(budget) or budget < 0:
        raise ValueError(f"{where}: budget must be a finite number >= 0, got {value!r}")
    return budget


def budget_label(budget: float | None) -> str:
    """A budget in metric names: a short decimal as is (``0.05``), else grey levels when it is a multiple
    of 0.1/255 (``8_255``, ``0.2_255``), else the compact decimal; ``min`` for minimal-norm attacks."""
    if budget is None:
        return MINIMAL
    if abs(budget - round(budget, 4)) < 1e-12:
        return f"{budget:g}"
    tenths = budget * 2550
    if abs(tenths - round(tenths)) < 1e-6:
        return f"{round(tenths) / 10:g}_255"
    return f"{budget:g}"


def budget_value(label: str) -> float | None:
    """The numeric budget of a label (``8_255`` -> 8/255, ``0.05`` -> 0.05); None for ``min``."""
    numerator, _, denominator = label.partition("_")
    try:
        return float(numerator) / float(denominator or 1)
    except ValueError:
        return None


def budget_text(label: str) -> str:
    """A budget label as readers write it: ``8_255`` -> ``8/255``."""
    return label.replace("_", "/")


def scaled_by_budget(value: Any, budget: float | None, where: str) -> Any:
    """A setting written relative to the budget (``eps``, ``eps/10``, ``2.5*eps``, ``0.5*eps/4``) as a
    number at ``budget``; any other value as it is. Lets one config entry keep a paper's step size (e.g.
    Ma et al.'s PGD step eps/10) across all its budgets."""
    if not (isinstance(value, str) and "eps" in value):
        return value
    if budget is None:
        raise ValueError(f"{where}: {value!r} is relative to the budget, but a minimal-norm attack has none")
    factor, _, rest = value.replace(" ", "").rpartition("*")
    name, _, divisor = rest.partition("/")
    try:
        if name != "eps":
            raise ValueError(name)
        return budget * float(factor or 1) / float(divisor or 1)
    except (ValueError, ZeroDivisionError) as error:
        raise ValueError(f"{where}: {value!r} is not a budget multiple such as eps/10 or 2.5*eps") from error
