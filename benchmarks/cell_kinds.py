"""What each kind of benchmark cell runs inside ``trainer.test`` and what it stores: ``attack`` cells run
AdversarialEvaluation, ``transfer`` cells TransferEvaluation, ``detection`` cells
AdversarialDetectionEvaluation. Each kind builds its callback and reads back flat metrics and examples."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import lightning.pytorch as pl
import torch
from torchvision.io import encode_png

from attacks.budgets import budget_label
from benchmarks.grid import AttackSetting, Cell
from callbacks.adversarial_detection import AdversarialDetectionEvaluation, detection_metrics
from callbacks.analysis import analysis_from_config
from callbacks.attack_eval import AdversarialEvaluation, AttackSpec, norms_key
from callbacks.detector_features import DetectionReport
from callbacks.examples import Example
from callbacks.transfer import TESTED, TransferEvaluation

StoredExamples = list[tuple[str, bytes]]


@dataclass(frozen=True)
class CellOutput:
    """What a cell stores: flat metrics, example PNGs with captions, per-sample scores by stream, and the
    analysis arrays by name (``callbacks.analysis``)."""

    metrics: dict[str, float]
    examples: StoredExamples = field(default_factory=list)
    samples: dict[str, dict[str, float]] = field(default_factory=dict)
    arrays: dict[str, Any] = field(default_factory=dict)


def attack_spec(setting: AttackSetting, seed: int) -> AttackSpec:
    """The registry attack of a config entry under its label (metric names), seeded with the cell's seed."""
    return AttackSpec(setting.label, lambda budget: setting.build(seed, budget), (setting.budget,))


def example_png(example: Example) -> tuple[str, bytes]:
    """One example as a PNG strip (clean | amplified perturbation | adversarial) and its caption."""
    strip = torch.cat([example.clean, example.perturbation, example.adversarial], dim=2)
    caption = (
        f"{example.sample_id}: label {example.label}, clean prediction {example.clean_prediction}, "
        f"adversarial prediction {example.adversarial_prediction}"
    )
    return caption, bytes(encode_png(strip).numpy().tobytes())


class CellKind(Protocol):
    def callback(self, cell: Cell, models: Mapping[str, pl.LightningModule]) -> pl.Callback: ...

    def results(self, cell: Cell, callback: Any) -> CellOutput: ...


@dataclass(frozen=True)
class AttackCell:
    """One attack at one budget on one model: task metrics, perturbation statistics, quality, cost."""

    def callback(self, cell: Cell, models: Mapping[str, pl.LightningModule]) -> AdversarialEvaluation:
        evaluation = cell.evaluation
        analysis = evaluation.get("analysis")
        return AdversarialEvaluation(
            [attack_spec(setting, cell.seed) for setting in cell.attacks],
            examples=evaluation.get("examples", 4),
            brisque=evaluation.get("brisque", True),
            precision=evaluation.get("precision", "32"),
            channels_last=evaluation.get("channels_last"),
            compile=evaluation.get("compile", False),
            attack_batch_size=evaluation.get("attack_batch_size"),
            robust_accuracy_only=evaluation.get("robust_accuracy_only", False),
            analysis=None if analysis is None else analysis_from_config(analysis, cell.seed),
        )

    def results(self, cell: Cell, callback: AdversarialEvaluation) -> CellOutput:
        """The cell's metrics (``adv/...``, ``check/...``, ``clean/...``), examples, and per-sample scores
        (``clean`` and ``adv``), from which the report takes the worst case over attacks, and a minimal-norm
        attack's per-sample norms (``norm``), from which it draws robust accuracy against the budget."""
        cell_key = f"{cell.attack}/{budget_label(cell.budget)}/"
        prefixes = {f"adv/{cell_key}": "adv/", f"check/{cell_key}": "check/", "clean/": "clean/"}
        metrics = {
            key.replace(prefix, stored, 1): value
            for key, value in callback.results.items()
            for prefix, stored in prefixes.items()
            if key.startswith(prefix)
        }
        if not any(key.startswith("adv/") for key in metrics):
            raise RuntimeError(f"the evaluation logged no adv/{cell_key}* metrics: {sorted(callback.results)}")
        attack_key = cell_key.removesuffix("/")
        streams = {"clean": "clean", "adv": attack_key, "norm": norms_key(attack_key)}
        samples = {stream: dict(callback.sample_scores[key]) for stream, key in streams.items()
                   if key in callback.sample_scores}
        arrays = callback.analysis.arrays(attack_key) if callback.analysis else {}
        return CellOutput(metrics, [example_png(example) for example in callback.last_examples], samples,
                          {name: array.numpy() for name, array in arrays.items()})


@dataclass(frozen=True)
class TransferCell:
    """One attack crafted on each source model (or ensemble) and evaluated on every model: one row of the
    transfer matrix per source, stored as ``{source}->{target}/success_rate``."""

    def callback(self, cell: Cell, models: Mapping[str, pl.LightningModule]) -> TransferEvaluation:
        tested, *others = models
        rename = {tested: TESTED}
        sources = [[rename.get(name, name) for name in ([group] if isinstance(group, str) else group)]
                   for group in cell.study["sources"]]
        return TransferEvaluation(
            [attack_spec(setting, cell.seed) for setting in cell.attacks],
            {name: models[name] for name in others},
            sources=sources,
            precision=cell.evaluation.get("precision", "32"),
        )

    def results(self, cell: Cell, callback: TransferEvaluation) -> CellOutput:
        tested = next(iter(spec.label for spec in cell.models))
        (rows,) = callback.matrix.values()
        metrics = {}
        for source, targets in rows.items():
            source_name = "+".join(tested if name == TESTED else name for name in source.split("+"))
            for target, rate in targets.items():
                metrics[f"{source_name}->{tested if target == TESTED else target}/success_rate"] = rate
        return CellOutput(metrics)


@dataclass(frozen=True)
class DetectionCell:
    """Every attack of the study at one budget, and the KD/LID/DFeat/QFeat detectors trained across them."""

    def callback(self, cell: Cell, models: Mapping[str, pl.LightningModule]) -> AdversarialDetectionEvaluation:
        attacks = {
            setting.label: setting.build(cell.seed)
            for setting in cell.attacks
        }
        return AdversarialDetectionEvaluation(attacks, seed=cell.seed, **cell.study)

    def results(self, cell: Cell, callback: AdversarialDetectionEvaluation) -> CellOutput:
        return CellOutput(detection_metrics(DetectionReport(**callback.results)))


CELL_KINDS: dict[str, CellKind] = {"attack": AttackCell(), "transfer": TransferCell(), "detection": DetectionCell()}
