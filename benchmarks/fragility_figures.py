"""The fragility view: accuracy under attack against input size and against model size, for benchmarks whose
attack cells set the input size (``data.init_args.size``) and the network (``model.init_args.model_name``) of
one train config to several values (the ``fragility`` suite). A table and a figure per budget."""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from attacks.budgets import budget_text
from benchmarks.figures import PALETTE, Image, new_figure, png_of
from benchmarks.store import CellRecord
from benchmarks.tables import Summary, Table, ordered_budgets, select, summarize, unique

SIZE_ARGUMENT = "--data.init_args.size="
NETWORK_ARGUMENT = "--model.init_args.model_name="
METRIC = "accuracy"


@dataclass(frozen=True)
class Variant:
    """Where a classifier's attack cell sits on the two axes: its train config, network and input size."""

    family: str
    network: str
    size: int


@dataclass(frozen=True)
class Point:
    """One variant at one budget: clean accuracy and the lowest accuracy over the attacks (and which)."""

    variant: Variant
    clean: Summary | None
    attacked: dict[str, Summary | None]

    @property
    def strongest(self) -> tuple[str, Summary] | None:
        """The attack with the lowest mean accuracy, or None when no attack was measured."""
        measured = [(attack, s) for attack, s in self.attacked.items() if s is not None]
        return min(measured, key=lambda item: item[1].mean) if measured else None


def variant_of(record: CellRecord) -> Variant | None:
    """The cell's variant from its model's stored arguments; None unless it is a classification attack cell
    whose overrides set both the input size and the network."""
    models = record.settings.get("models") or {}
    if record.kind != "attack" or record.settings.get("task") != "classification" or record.model not in models:
        return None
    model = models[record.model]
    found = {prefix: arg[len(prefix):] for arg in model["args"] for prefix in (SIZE_ARGUMENT, NETWORK_ARGUMENT)
             if arg.startswith(prefix)}
    if len(found) < 2:
        return None
    return Variant(Path(model["config"]).stem, found[NETWORK_ARGUMENT], int(found[SIZE_ARGUMENT]))


@functools.cache
def parameter_count(network: str) -> int:
    """Parameters of the timm network without its classification layer (built on the meta device: no memory)."""
    from lightning_modules.pretrained import create_timm_model  # timm loads only for reports with this view

    with torch.device("meta"):
        return sum(p.numel() for p in create_timm_model(network, num_classes=0).parameters())


def fragility_points(records: Sequence[CellRecord]) -> dict[str, list[Point]]:
    """Per budget label (ascending), one point per variant: families in order of appearance, networks by
    parameter count, sizes ascending. Empty unless some train config varies the size or the network."""
    variants = {record.key: variant_of(record) for record in records}
    found = unique(v for v in variants.values() if v is not None)
    varied = {v.family for v in found if len({(w.network, w.size) for w in found if w.family == v.family}) > 1}
    families = unique(v.family for v in found if v.family in varied)
    ordered = sorted((v for v in found if v.family in varied),
                     key=lambda v: (families.index(v.family), parameter_count(v.network), v.network, v.size))
    measured = [r for r in records if variants[r.key] in ordered]
    points: dict[str, list[Point]] = {}
    for budget in ordered_budgets(r.budget for r in measured):
        at_budget = select(measured, budget=budget)
        for variant in ordered:
            cells = [r for r in at_budget if variants[r.key] == variant]
            if cells:
                attacks = unique(r.attack for r in cells)
                attacked = {a: summarize(select(cells, attack=a), f"adv/{METRIC}") for a in attacks}
                points.setdefault(budget, []).append(Point(variant, summarize(cells[:1], f"clean/{METRIC}"), attacked))
    return points


def fragility_table(budget: str, points: Sequence[Point]) -> Table:
    """Clean accuracy, accuracy under each attack and the lowest of them, one row per variant."""
    attacks = unique(a for p in points for a in p.attacked)
    rows = []
    for p in points:
        strongest = p.strongest
        rows.append((p.variant.family, p.variant.network, f"{parameter_count(p.variant.network) / 1e6:.2f}",
                     f"{p.variant.size} px", p.clean, *(p.attacked.get(a) for a in attacks),
                     strongest[1] if strongest else None, strongest[0] if strongest else None))
    return Table(f"Fragility at {budget_text(budget)}: accuracy by input size and network",
                 ("train config", "network", "parameters (M)", "input size", "clean", *attacks, "lowest", "by"),
                 tuple(rows), "Accuracy with its 95% Wilson interval (one seed) or mean ± std over seeds. "
                 "Parameters without the classification layer.")


def fragility_figure(budget: str, family: str, points: Sequence[Point]) -> Image:
    """Two panels for one train config: accuracy against input size (a line per network) and against
    parameter count (a line per input size); solid: the lowest accuracy over the attacks, dashed: clean."""
    figure, (by_size, by_params) = new_figure(2)
    for ax, line_of, x_of, label in (
        (by_size, lambda v: v.network, lambda v: v.size, "input size (px)"),
        (by_params, lambda v: f"{v.size} px", lambda v: parameter_count(v.network) / 1e6, "parameters (M)"),
    ):
        for index, line in enumerate(unique(line_of(p.variant) for p in points)):
            ours = sorted((p for p in points if line_of(p.variant) == line), key=lambda p: x_of(p.variant))
            xs = [x_of(p.variant) for p in ours]
            color = PALETTE[index % len(PALETTE)]
            attacked = [p.strongest[1].mean if p.strongest else math.nan for p in ours]
            ax.plot(xs, attacked, marker="o", color=color, label=line)
            clean = [p.clean.mean if p.clean else math.nan for p in ours]
            ax.plot(xs, clean, linestyle="--", marker="x", color=color, alpha=0.6)
        ax.set_xscale("log")
        ticks = sorted({x_of(p.variant) for p in points})
        ax.set_xticks(ticks, [f"{t:.3g}" for t in ticks])
        ax.minorticks_off()
        ax.set_ylim(-0.03, 1.03)
        ax.set_xlabel(label)
        ax.set_ylabel(METRIC)
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    return Image(f"{family}: {METRIC} at {budget_text(budget)} by input size and model size", png_of(figure),
                 "Solid: the lowest accuracy over the attacks at this budget; dashed with crosses: clean. Lines that "
                 "fall towards 0 as the input or the network grows mean that fragility depends on resolution or "
                 "capacity; a gap between dashed and solid that stays the same means it does not.")


def fragility_blocks(records: Sequence[CellRecord]) -> list[Table | Image]:
    """Per budget, the table and then one figure per train config; empty for benchmarks without the axes."""
    blocks: list[Table | Image] = []
    for budget, points in fragility_points(records).items():
        blocks.append(fragility_table(budget, points))
        for family in unique(p.variant.family for p in points):
            blocks.append(fragility_figure(budget, family, [p for p in points if p.variant.family == family]))
    return blocks
