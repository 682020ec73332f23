"""The report's figures, drawn with matplotlib's Agg canvas (no pyplot, no display) into PNG bytes:
metric-vs-budget curves, success rate against SSIM/BRISQUE, Var/Cos bars and transfer heat maps."""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from attacks.budgets import budget_text, budget_value
from attacks.fmn import robust_accuracy_curve
from benchmarks.store import CellRecord
from benchmarks.tables import (
    METRIC_NAMES,
    SamplesOf,
    Summary,
    TransferMatrix,
    WorstCase,
    ordered_budgets,
    select,
    summarize,
    unique,
)
from callbacks.worst_case import threat_group

PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#7f7f7f",
           "#bcbd22")


@dataclass(frozen=True)
class Image:
    """A PNG for the report with its title and caption: a plot, or a stored example of a cell."""

    title: str
    png: bytes
    caption: str = ""
    kind: str = "plot"


def png_of(figure: Figure) -> bytes:
    """A figure rendered by the Agg canvas as PNG bytes."""
    buffer = io.BytesIO()
    FigureCanvasAgg(figure).print_png(buffer)
    return buffer.getvalue()


def new_figure(panels: int, width: float = 5.0, height: float = 3.6) -> tuple[Figure, list]:
    """A constrained-layout figure with ``panels`` axes side by side."""
    figure = Figure(figsize=(width * panels, height), dpi=100, layout="constrained")
    return figure, list(figure.subplots(1, panels, squeeze=False)[0])


def label_axes(ax: Any, xlabel: str, ylabel: str, legend: bool = True) -> None:
    """Axis labels, a light grid and (``legend``) a small legend."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    if legend:
        ax.legend(fontsize="small")


def attack_colors(records: Sequence[CellRecord]) -> dict[str, str]:
    """One colour per attack, fixed by the attack's place among all the records."""
    return {attack: PALETTE[i % len(PALETTE)] for i, attack in enumerate(unique(r.attack for r in records))}


def mean_and_std(summaries: Sequence[Summary | None]) -> tuple[list[float], list[float]]:
    """Means and standard deviations for plotting, NaN where a value is missing."""
    return ([s.mean if s else math.nan for s in summaries], [s.std if s else math.nan for s in summaries])


def draw_line(ax: Any, values: Sequence[float], summaries: Sequence[Summary | None], **style: Any) -> None:
    """One curve: error bars of one standard deviation over seeds, or a shaded 95% band where single cells
    carry their interval."""
    means, stds = mean_and_std(summaries)
    ax.errorbar(values, means, yerr=stds, marker="o", capsize=3, **style)
    lows = [s.interval[0] if s and s.interval else math.nan for s in summaries]
    highs = [s.interval[1] if s and s.interval else math.nan for s in summaries]
    if any(math.isfinite(low) for low in lows):
        ax.fill_between(values, lows, highs, color=style.get("color"), alpha=0.15, linewidth=0)


def budget_curves(
    records: Sequence[CellRecord], metrics: Sequence[str], worst: Sequence[WorstCase] = ()
) -> Image | None:
    """One panel per metric: ``adv/{metric}`` against the numeric budget, one line per attack (error bars over
    seeds, or the 95% band of one seed), the clean value as a dashed line, and in the first panel the
    per-sample worst case over the Linf attacks (``worst``) as a thick black line. Only budgets that are the
    attack's ``eps`` are drawn (not minimal-norm ``min``, exposure steps or pixel counts), each attack at its own
    budgets."""
    colors = attack_colors(records)
    records = [r for r in records if any(threat_group(attack.get("settings", {}), r.budget) is not None
                                         for attack in r.settings.get("attacks", []))]
    metrics = [m for m in metrics if any(f"adv/{m}" in r.metrics for r in records)]
    if not metrics:
        return None
    figure, axes = new_figure(len(metrics))
    for ax, metric in zip(axes, metrics, strict=True):
        measured = [r for r in records if f"adv/{metric}" in r.metrics]
        budgets = ordered_budgets(r.budget for r in measured)
        values = [budget_value(b) for b in budgets]
        clean = summarize(measured, f"clean/{metric}")
        if clean:
            ax.axhline(clean.mean, color="black", linestyle="--", linewidth=1, label="clean")
        for attack in unique(r.attack for r in measured):
            own = ordered_budgets(r.budget for r in measured if r.attack == attack)
            summaries = [summarize(select(measured, attack=attack, budget=b), f"adv/{metric}") for b in own]
            draw_line(ax, [budget_value(b) for b in own], summaries, color=colors[attack], label=attack)
        cases = [case for case in worst if case.norm == "linf" and budget_value(case.budget) is not None]
        if metric == metrics[0] and cases:
            cases.sort(key=lambda case: budget_value(case.budget))
            draw_line(ax, [budget_value(case.budget) for case in cases], [case.worst for case in cases],
                      color="black", linewidth=2.5, label="worst case")
        if len(values) > 1 and max(values) / min(values) > 20:
            ax.set_xscale("log")
        ax.set_xticks(values, [budget_text(b) for b in budgets], rotation=45 if len(values) > 5 else 0)
        ax.minorticks_off()
        ax.set_ylim(-0.03, 1.03)
        ax.set_xlabel("budget (max perturbation)")
        ax.set_ylabel(f"adversarial {METRIC_NAMES.get(metric, metric)}")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize="small")
    names = " and ".join(METRIC_NAMES.get(m, m) for m in metrics)
    return Image(f"{names.capitalize()} against budget", png_of(figure),
                 "One seed: shaded 95% interval (Wilson for proportions, bootstrap over images for means); several "
                 "seeds: error bars of one standard deviation. Dashed: clean. Thick black: the per-sample worst case "
                 "over the Linf attacks of each budget (segmentation: per-image Jaccard; detection: per-image "
                 "recall), the number to quote; a single attack's curve far above it means that attack alone "
                 "overstates robustness.")


def quality_scatter(records: Sequence[CellRecord]) -> Image | None:
    """Success rate against SSIM and against BRISQUE (the exposure paper's Fig. 3): one line per attack
    through its budgets, each point labelled with its budget."""
    qualities = [(key, name) for key, name in (("adv/ssim", "SSIM"), ("adv/brisque", "BRISQUE"))
                 if any(key in r.metrics and "adv/success_rate" in r.metrics for r in records)]
    if not qualities:
        return None
    colors = attack_colors(records)
    figure, axes = new_figure(len(qualities))
    for ax, (key, name) in zip(axes, qualities, strict=True):
        for attack in unique(r.attack for r in records):
            of_attack = select(records, attack=attack)
            budgets = ordered_budgets(r.budget for r in of_attack)
            xs, _ = mean_and_std([summarize(select(of_attack, budget=b), key) for b in budgets])
            ys, _ = mean_and_std([summarize(select(of_attack, budget=b), "adv/success_rate") for b in budgets])
            ax.plot(xs, ys, marker="o", color=colors[attack], label=attack)
            for x, y, budget in zip(xs, ys, budgets, strict=True):
                if math.isfinite(x) and math.isfinite(y):
                    ax.annotate(budget_text(budget), (x, y), textcoords="offset points", xytext=(4, 4),
                                fontsize="x-small", color=colors[attack])
        ax.set_xlabel(f"{name} ({'higher' if name == 'SSIM' else 'lower'} is closer to clean)")
        ax.set_ylabel("attack success rate")
        ax.set_ylim(-0.03, 1.08)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize="small")
    return Image("Success rate against image quality", png_of(figure), "Mean over seeds; labels: budgets.")


def minimal_norm_curves(records: Sequence[CellRecord], samples_of: SamplesOf) -> Image | None:
    """Robust accuracy against the budget from the per-sample norms of minimal-norm attacks (FMN, FAB, ALMA
    prox, ...), every budget from one run: one panel per norm, one step curve per attack (first seed)."""
    seed = min((r.seed for r in records), default=0)
    curves: dict[str, list[tuple[str, torch.Tensor]]] = {}
    for record in select(records, seed=seed):
        norms = samples_of(record.key).get("norm")
        attacks = record.settings.get("attacks") or [{}]
        if norms:
            norm = attacks[0].get("settings", {}).get("norm", "linf")
            curves.setdefault(norm, []).append((record.attack, torch.tensor(list(norms.values()))))
    if not curves:
        return None
    colors = attack_colors(records)
    figure, axes = new_figure(len(curves))
    for ax, (norm, found) in zip(axes, sorted(curves.items()), strict=True):
        finite = torch.cat([norms[norms.isfinite()] for _, norms in found])
        top = float(finite.max()) * 1.05 if len(finite) else 1.0
        grid = torch.linspace(0.0, top, 200)
        for attack, norms in found:
            ax.plot(grid, robust_accuracy_curve(norms.double(), grid.double()), color=colors[attack],
                    label=f"{attack} (median {norms.median():.3g})")
        ax.set_ylim(-0.03, 1.03)
        label_axes(ax, f"budget ({norm} norm)", "robust accuracy")
    return Image("Robust accuracy against budget, from minimal perturbations", png_of(figure),
                 "Each sample is robust up to its smallest adversarial perturbation found, so one run gives every "
                 "budget; a curve above a fixed-budget attack's point at the same budget means the minimal-norm "
                 "attack found weaker perturbations there.")


def perturbation_bars(records: Sequence[CellRecord]) -> Image | None:
    """SMIA's perturbation variance (Var) and share of positive update cosines (Cos > 0) as grouped bars:
    one group per attack, one bar per budget."""
    panels = [(key, name) for key, name in (("adv/var", "Var"), ("adv/cos_positive", "Cos > 0"))
              if any(key in r.metrics for r in records)]
    if not panels:
        return None
    attacks = unique(r.attack for r in records)
    budgets = ordered_budgets(r.budget for r in records)
    width = 0.8 / len(budgets)
    figure, axes = new_figure(len(panels), width=max(4.0, 1.0 + 0.9 * len(attacks)))
    for ax, (key, name) in zip(axes, panels, strict=True):
        for i, budget in enumerate(budgets):
            means, stds = mean_and_std([summarize(select(records, attack=a, budget=budget), key) for a in attacks])
            positions = [a + (i - (len(budgets) - 1) / 2) * width for a in range(len(attacks))]
            color = colormaps["viridis"](0.85 * i / max(1, len(budgets) - 1))
            ax.bar(positions, means, width, yerr=stds, capsize=2, color=color, label=budget_text(budget))
        ax.set_xticks(range(len(attacks)), attacks, rotation=30 if len(attacks) > 4 else 0)
        ax.set_ylabel(name)
        ax.ticklabel_format(axis="y", style="sci", scilimits=(-2, 3))
        ax.grid(axis="y", alpha=0.3)
    axes[0].legend(title="budget", fontsize="small")
    return Image("Perturbation Var and Cos", png_of(figure),
                 "Var: variance of the final perturbation; Cos > 0: share of consecutive updates that agree.")


def transfer_heatmap(matrix: TransferMatrix, title: str) -> Image:
    """A transfer matrix as a heat map of success rates (rows crafted from, columns attacked model), each
    cell annotated, white-box cells (target among the sources) outlined."""
    figure = Figure(figsize=(2.2 + 1.1 * len(matrix.targets), 1.6 + 0.7 * len(matrix.sources)), dpi=100,
                    layout="constrained")
    ax = figure.subplots()
    means = [mean_and_std(row)[0] for row in matrix.rates]
    image = ax.imshow(means, vmin=0, vmax=1, cmap=colormaps["viridis"].with_extremes(bad="#cccccc"), aspect="auto")
    for i, source in enumerate(matrix.sources):
        for j, target in enumerate(matrix.targets):
            rate = matrix.rates[i][j]
            text = "–" if rate is None else f"{rate.mean:.2f}"
            ax.text(j, i, text, ha="center", va="center", fontsize="small",
                    color="black" if rate and rate.mean > 0.6 else "white")
            if target in source.split("+"):
                ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, edgecolor="#d62728", linewidth=2.5))
    ax.set_xticks(range(len(matrix.targets)), matrix.targets, rotation=20, ha="right")
    ax.set_yticks(range(len(matrix.sources)), matrix.sources)
    ax.set_xlabel("attacked model")
    ax.set_ylabel("crafted from")
    figure.colorbar(image, ax=ax, label="success rate")
    return Image(title, png_of(figure), "Outlined in red: white-box (the attacked model crafted the examples).")
