"""W&B side of the evaluation: a WandbLogger whose group / job_type / tags / config make runs of one
benchmark comparable side by side, offline unless an API key is configured, the examples table and the
analysis views (docs/dashboard.md)."""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from lightning.pytorch.loggers import WandbLogger

from callbacks.examples import Example

if TYPE_CHECKING:
    from callbacks.analysis import AdversarialAnalysis

EXAMPLE_COLUMNS = ["id", "attack", "label", "clean prediction", "adversarial prediction"]


def has_api_key() -> bool:
    """True when W&B can authenticate: WANDB_API_KEY set or a key in ~/.netrc for the W&B host."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    netrc = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
    return netrc.is_file() and "api.wandb.ai" in netrc.read_text(errors="ignore")


def run_metadata(module: Any, datamodule: Any, attack_names: Sequence[str]) -> dict[str, Any]:
    """group = dataset, job_type = attacks, tags = model and task: the keys W&B dashboards group by."""
    hparams = dict(getattr(module, "hparams", {}))
    model = hparams.get("model_name") or hparams.get("encoder_name") or hparams.get("backbone") or type(module).__name__
    dataset = getattr(datamodule, "name", None) or type(datamodule).__name__
    task = getattr(module, "task", "unknown")
    return {
        "group": str(dataset),
        "job_type": "+".join(attack_names) or "clean",
        "tags": [str(model), str(task)],
        "config": {"model": hparams | {"class": type(module).__name__}, "dataset": str(dataset), "task": task},
    }


def make_wandb_logger(
    module: Any,
    datamodule: Any,
    attack_names: Sequence[str],
    project: str = "medadvbench",
    save_dir: str | Path = ".",
    offline: bool | None = None,
    group: str | None = None,
    config: Mapping[str, Any] | None = None,
    **kwargs: Any,
) -> WandbLogger:
    """A WandbLogger for one evaluation run; offline (sync later with ``wandb sync``) without an API key.
    ``group`` replaces the dataset as group (a benchmark groups its cells); ``config`` adds run config keys."""
    metadata = run_metadata(module, datamodule, attack_names)
    return WandbLogger(
        project=project,
        save_dir=str(save_dir),
        offline=not has_api_key() if offline is None else offline,
        group=group or metadata["group"],
        job_type=metadata["job_type"],
        tags=metadata["tags"],
        config=metadata["config"] | dict(config or {}),
        **kwargs,
    )


def wandb_loggers(loggers: Iterable[Any]) -> list[WandbLogger]:
    return [logger for logger in loggers if isinstance(logger, WandbLogger)]


def log_examples(logger: WandbLogger, examples: Sequence[Example], key: str = "examples") -> None:
    """Log the example triplets: ``{key}`` (table: id, attack, label and predictions) and ``{key}/images`` (one
    clean | amplified perturbation | adversarial strip per row, captioned with the row's texts; a list, as offline
    runs of wandb 0.31 keep no images inside tables)."""
    import wandb

    table = wandb.Table(columns=EXAMPLE_COLUMNS)
    strips = []
    for row in examples:
        table.add_data(row.sample_id, row.attack, row.label, row.clean_prediction, row.adversarial_prediction)
        caption = (f"{row.sample_id} {row.attack}: clean | perturbation | adversarial; label {row.label}, "
                   f"prediction {row.clean_prediction} -> {row.adversarial_prediction}")
        strip = torch.cat((row.clean, row.perturbation, row.adversarial), dim=2)
        strips.append(wandb.Image(strip.permute(1, 2, 0).numpy(), caption=caption))
    logged: dict[str, Any] = {key: table}
    if strips:
        logged[f"{key}/images"] = strips
    logger.experiment.log(logged)


def log_run_config(logger: WandbLogger, config: Mapping[str, Any]) -> None:
    """Add the evaluation's settings (attacks, budgets) to the run config."""
    logger.experiment.config.update(dict(config), allow_val_change=True)


def log_analysis(logger: WandbLogger, analysis: AdversarialAnalysis) -> None:
    """The analysis views: ``analysis/landscape`` (table: mean loss against the Linf offset along the adversarial
    and the random direction, also drawn as a line chart), ``analysis/attribution`` (images: clean | adversarial
    Grad-CAM overlay per attack and sample, captioned with the attack's shift measures; a list, as offline runs
    keep no images inside tables) and ``analysis/tsne`` (table: the embedded points of every attack)."""
    import wandb

    from callbacks.analysis import attribution_overlays

    if analysis.clean is None:
        return
    landscape = analysis.clean.landscape
    offsets = landscape.offsets.tolist()
    curves = {direction: landscape.along(direction).mean(dim=0).tolist() for direction in ("adversarial", "random")}
    logged: dict[str, Any] = {
        "analysis/landscape": wandb.Table(columns=["offset", "adversarial", "random"],
                                          data=[list(row) for row in zip(offsets, *curves.values(), strict=True)]),
        "analysis/landscape_chart": wandb.plot.line_series(offsets, list(curves.values()), list(curves),
                                                           "Loss around the test samples", "Linf offset"),
    }
    attribution = []
    tsne = wandb.Table(columns=["attack", "x", "y", "kind", "label"])
    for key, views in analysis.views.items():
        arrays, metrics = views.arrays, views.metrics
        for i, overlays in enumerate(attribution_overlays(arrays)):
            caption = (f"{key} sample {i}: clean | adversarial; rank corr {metrics['cam_rank_corr']:.2f}, "
                       f"top-20% IoU {metrics['cam_iou']:.2f}")
            attribution.append(wandb.Image(torch.cat(overlays, dim=2).permute(1, 2, 0).numpy(), caption=caption))
        if "features/embedding" in arrays:
            for (x, y), adversarial, label in zip(arrays["features/embedding"].tolist(),
                                                  arrays["features/adversarial"].tolist(),
                                                  arrays["features/labels"].tolist(), strict=True):
                tsne.add_data(key, x, y, "adversarial" if adversarial else "clean", int(label))
    if attribution:
        logged["analysis/attribution"] = attribution
    if tsne.data:
        logged["analysis/tsne"] = tsne
    logger.experiment.log(logged)
