"""The report's analysis figures, drawn from the arrays the analysis stored per cell (``callbacks.analysis``):
loss landscapes (1-D and 2-D), Grad-CAM overlays clean against adversarial, the attribution shift per attack,
and t-SNE of penultimate features."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace

import numpy as np
import torch
from matplotlib.figure import Figure

from attacks.budgets import budget_text
from benchmarks.figures import PALETTE, Image, label_axes, mean_and_std, new_figure, png_of
from benchmarks.store import CellRecord
from benchmarks.tables import in_grid_order, ordered_budgets, select, summarize, unique
from callbacks.analysis import attribution_overlays
from callbacks.analysis_landscape import Landscape

Arrays = Mapping[str, np.ndarray]
GREY = 255  # offsets are drawn in grey levels
SHOWN_SAMPLES = 2  # samples per attack in the Grad-CAM view


def grid_figure(rows: int, columns: int, width: float, height: float) -> tuple[Figure, np.ndarray]:
    """A constrained-layout figure with a rows x columns grid of axes of about ``width`` x ``height`` inches."""
    size = (0.4 + width * columns, 0.3 + height * rows)
    figure = Figure(figsize=size, dpi=100)
    axes = figure.subplots(rows, columns, squeeze=False)
    # fixed margins: constrained layout is slow on many panels
    figure.subplots_adjust(left=0.4 / size[0], right=0.99, bottom=0.02, top=1 - 0.3 / size[1], wspace=0.08, hspace=0.25)
    return figure, axes


def landscape_of(arrays: Arrays) -> Landscape | None:
    """The stored landscape of a cell, if the analysis ran."""
    if "landscape/losses" not in arrays:
        return None
    return Landscape(torch.from_numpy(arrays["landscape/offsets"]), torch.from_numpy(arrays["landscape/losses"]))


def landscape_curves(landscapes: Mapping[str, Landscape]) -> Image | None:
    """Mean loss over the samples (band: one std) against the Linf offset along the adversarial direction
    (solid) and a random sign direction (dashed), one colour per model; the legend gives each sharpness."""
    if not landscapes:
        return None
    figure, (ax,) = new_figure(1, width=6.0)
    for i, (model, landscape) in enumerate(landscapes.items()):
        offsets = landscape.offsets.numpy() * GREY
        for direction, style in (("adversarial", "-"), ("random", "--")):
            curve = landscape.along(direction).double()
            mean, std = curve.mean(dim=0).numpy(), curve.std(dim=0, correction=0).numpy()
            label = f"{model}, {direction} (sharpness {landscape.sharpness(direction):.3g})"
            ax.plot(offsets, mean, style, color=PALETTE[i % len(PALETTE)], marker="o", markersize=3, label=label)
            ax.fill_between(offsets, mean - std, mean + std, color=PALETTE[i % len(PALETTE)], alpha=0.1, linewidth=0)
    ax.axvline(0, color="grey", linewidth=0.8)
    label_axes(ax, "Linf offset from the test image (grey levels of 255)", "task loss")
    return Image(
        "Loss along the adversarial and a random direction",
        png_of(figure),
        "Look for a steep solid curve beside a flat dashed one: the loss is sharp only along the adversarial "
        "direction (sign of the input gradient). Sharpness: the largest mean loss rise within the radius; "
        "an adversarially trained model should be flatter.",
    )


def landscape_surfaces(landscapes: Mapping[str, Landscape]) -> Image | None:
    """The mean loss over the plane of the two directions, one panel per model (Ma et al. 2020, Fig. 7)."""
    if not landscapes:
        return None
    figure, axes = new_figure(len(landscapes), width=4.4, height=3.8)
    for ax, (model, landscape) in zip(axes, landscapes.items(), strict=True):
        surface = landscape.losses.double().mean(dim=0).numpy()
        grid = landscape.offsets.numpy() * GREY
        image = ax.contourf(grid, grid, surface.T, levels=16, cmap="magma")
        ax.contour(grid, grid, surface.T, levels=8, colors="white", linewidths=0.6, alpha=0.6)
        ax.set_title(model, fontsize="medium")
        ax.set_xlabel("adversarial direction (grey levels)")
        ax.set_ylabel("random direction (grey levels)")
        figure.colorbar(image, ax=ax, label="task loss")
    return Image(
        "Loss landscape around the test samples",
        png_of(figure),
        "Look for contour lines crowded along the horizontal axis and spread along the vertical one: a loss "
        "that climbs fast only in the adversarial direction.",
    )


def attribution_view(cells: Sequence[tuple[str, Arrays]]) -> Image | None:
    """Per attack (rows) and sample (column pairs): the attribution map over the clean and the adversarial image."""
    rows = [
        (label, attribution_overlays({k: torch.from_numpy(v) for k, v in arrays.items()})[:SHOWN_SAMPLES])
        for label, arrays in cells
    ]
    rows = [(label, overlays) for label, overlays in rows if overlays]
    if not rows:
        return None
    columns = 2 * max(len(overlays) for _, overlays in rows)
    figure, axes = grid_figure(len(rows), columns, 1.5, 1.6)
    for r, (label, overlays) in enumerate(rows):
        for ax in axes[r]:
            ax.set_axis_off()
        for s, pair in enumerate(overlays):
            for c, (overlay, kind) in enumerate(zip(pair, ("clean", "adversarial"), strict=True)):
                ax = axes[r][2 * s + c]
                ax.imshow(overlay.permute(1, 2, 0).numpy(), interpolation="nearest")
                ax.set_title(f"sample {s + 1}, {kind}", fontsize="x-small")
        axes[r][0].text(
            -0.08, 0.5, label, transform=axes[r][0].transAxes, rotation=90, ha="right", va="center", fontsize="small"
        )
    return Image(
        "Where the model looks, clean against adversarial",
        png_of(figure),
        "Grad-CAM (saliency for non-convolutional networks) of the predicted class, red high. Look for the "
        "red region moving between the clean and the adversarial column: attention pulled off the lesion "
        "or organ (Ma et al. 2020, Fig. 11).",
    )


def attribution_shift_bars(records: Sequence[CellRecord]) -> Image | None:
    """Spearman rank correlation and top-20% IoU of clean and adversarial attribution maps, one bar per
    attack and budget (mean over seeds, error bar one std)."""
    panels = [
        (key, name)
        for key, name in (("adv/cam_rank_corr", "rank correlation"), ("adv/cam_iou", "IoU of the top-20% regions"))
        if any(key in r.metrics for r in records)
    ]
    if not panels:
        return None
    cells = [
        (attack, budget)
        for attack in unique(r.attack for r in records)
        for budget in ordered_budgets(r.budget for r in select(records, attack=attack))
        if any(panels[0][0] in r.metrics for r in select(records, attack=attack, budget=budget))
    ]
    figure, axes = new_figure(len(panels), width=max(4.0, 0.9 + 0.55 * len(cells)))
    labels = [f"{attack} {budget_text(budget)}" for attack, budget in cells]
    for ax, (key, name) in zip(axes, panels, strict=True):
        means, stds = mean_and_std([summarize(select(records, attack=a, budget=b), key) for a, b in cells])
        ax.bar(
            range(len(cells)),
            means,
            yerr=[0 if math.isnan(s) else s for s in stds],
            capsize=2,
            color=[PALETTE[i % len(PALETTE)] for i in range(len(cells))],
        )
        ax.set_xticks(range(len(cells)), labels, rotation=45, ha="right", fontsize="small")
        ax.set_ylim(-1.03 if "corr" in key else 0, 1.03)
        ax.axhline(0, color="grey", linewidth=0.8)
        ax.set_ylabel(name)
        ax.grid(axis="y", alpha=0.3)
    return Image(
        "Attribution shift per attack",
        png_of(figure),
        "1 means the adversarial image is explained by the same regions as the clean one; the lower the bar, "
        "the further the attack moved the model's attention (first test batch, up to `samples` images).",
    )


def tsne_view(cells: Sequence[tuple[str, Arrays]]) -> Image | None:
    """One t-SNE panel per attack: penultimate features of clean (blue) and adversarial (orange) samples."""
    cells = [(label, arrays) for label, arrays in cells if "features/embedding" in arrays]
    if not cells:
        return None
    columns = min(4, len(cells))
    rows = math.ceil(len(cells) / columns)
    figure, grid = grid_figure(rows, columns, 2.6, 2.5)
    axes = grid.flatten()
    for ax in axes:
        ax.set_axis_off()
    for ax, (label, arrays) in zip(axes, cells, strict=False):
        ax.set_axis_on()
        ax.set_xticks([])
        ax.set_yticks([])
        points, adversarial = arrays["features/embedding"], arrays["features/adversarial"].astype(bool)
        for mask, name, colour in ((~adversarial, "clean", PALETTE[0]), (adversarial, "adversarial", PALETTE[3])):
            ax.scatter(points[mask, 0], points[mask, 1], s=10, color=colour, label=name, alpha=0.8)
        ax.set_title(label, fontsize="small")
    axes[0].legend(fontsize="x-small", loc="upper right")
    return Image(
        "Penultimate features, clean against adversarial (t-SNE)",
        png_of(figure),
        "Look for orange points forming their own cluster: adversarial features leave the clean manifold, "
        "which is why feature-space detectors (KD, LID) work (Ma et al. 2020, Fig. 9).",
    )


ArraysOf = Callable[[str], Arrays]


def first_seed_arrays(records: Sequence[CellRecord], arrays_of: ArraysOf) -> list[tuple[str, Arrays]]:
    """(``attack at budget``, arrays) of the first seed's cells in grid order, those that stored any."""
    seed = min((r.seed for r in records), default=0)
    found = [
        (f"{r.attack} at {budget_text(r.budget)}", arrays_of(r.key)) for r in in_grid_order(select(records, seed=seed))
    ]
    return [(label, arrays) for label, arrays in found if arrays]


def model_landscapes(records: Sequence[CellRecord], arrays_of: ArraysOf) -> dict[str, Landscape]:
    """Each model's landscape, from its first cell that stored one (every cell of a model stores the same)."""
    found: dict[str, Landscape] = {}
    for model in unique(r.model for r in records):
        for _, arrays in first_seed_arrays(select(records, model=model), arrays_of):
            if (landscape := landscape_of(arrays)) is not None:
                found[model] = landscape
                break
    return found


def model_analysis(records: Sequence[CellRecord], arrays_of: ArraysOf) -> list[Image]:
    """One model's analysis figures: landscape curves and surface, attribution view and shift, t-SNE."""
    landscapes = model_landscapes(records, arrays_of)
    cells = first_seed_arrays(records, arrays_of)
    images = [
        landscape_curves(landscapes),
        landscape_surfaces(landscapes),
        attribution_view(cells),
        attribution_shift_bars(records),
        tsne_view(cells),
    ]
    return [image for image in images if image]


def landscape_comparison(records: Sequence[CellRecord], arrays_of: ArraysOf) -> list[Image]:
    """The landscapes of a dataset's models side by side (e.g. clean against adversarially trained), when it
    has more than one."""
    landscapes = model_landscapes(select(records, kind="attack"), arrays_of)
    if len(landscapes) < 2:
        return []
    images = [landscape_curves(landscapes), landscape_surfaces(landscapes)]
    return [replace(image, title=f"{image.title}: models compared") for image in images if image]
