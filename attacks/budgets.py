"""Perturbation budgets as people write them (``8/255``, ``0.05``, ``min``) and as metric names carry them
(``8_255``): parsed and printed here only, for configs, the evaluation callback, tables and reports."""

from __future__ import annotations

import math
from typing import Any

MINIMAL = "min"


def parse_budget(value: Any, where: str) -> float | None:
    """A budget from a config: a number, a fraction string such as ``8/255``, or null / ``min`` for
    minimal-norm attacks; ValueError naming ``where`` for anything else (NaN, infinities in either part of a
    fraction, negatives, and ``8_255``, the label form, which Python's float() would read as 8255)."""
    if value is None or (isinstance(value, str) and value == MINIMAL):
        return None
    try:
        text = str(value).replace(" ", "")
        if isinstance(value, bool) or "_" in text:
            raise ValueError(text)
        numerator, _, denominator = text.partition("/")
        parts = (float(numerator), float(denominator or 1))
        budget = parts[0] / parts[1]
    except (ValueError, ZeroDivisionError) as error:
        raise ValueError(f"{where}: budget {value!r} is neither a number nor a fraction like 8/255") from error
    if not all(math.isfinite(number) for number in (*parts, budget)) or budget < 0:
        raise ValueError(f"{where}: budget must be a finite number >= 0, got {value!r}")
    return budget + 0.0  # -0.0 as 0.0


def budget_label(budget: float | None) -> str:
    """A budget in metric names: a short decimal as is (``0.05``), else grey levels when it is a multiple
    of 0.1/255 (``8_255``, ``0.2_255``), else the compact decimal; ``min`` for minimal-norm attacks."""
    if budget is None:
        return MINIMAL
    if abs(budget - round(budget, 4)) < 1e-12:
        return f"{budget:g}"
    tenths = budget * 2550
    if round(tenths) > 0 and abs(tenths - round(tenths)) < 1e-6:  # not "0_255" for a tiny budget > 0
        level = round(tenths) / 2550
        if abs(level - round(level, 4)) < 1e-12:  # a grey level that is a short decimal reads back as one
            return f"{level:g}"
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
