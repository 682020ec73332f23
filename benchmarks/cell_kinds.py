"""What each kind of benchmark cell runs inside ``trainer.test`` and what it stores: ``attack`` cells run
AdversarialEvaluation, ``transfer`` cells TransferEvaluation, ``detection`` cells
AdversarialDetectionEvaluation. Each kind builds its callback and reads back flat metrics and examples."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import lightning.pytorch as pl
import torch
from torchvision.io import encode_png

from attacks.budgets import budget_label
from benchmarks.grid import AttackSetting, Cell
from callbacks.adversarial_detection import AdversarialDetectionEvaluation, detection_metrics
from callbacks.attack_eval import AdversarialEvaluation, AttackSpec
from callbacks.detector_features import DetectionReport
from callbacks.examples import Example
from callbacks.transfer import TESTED, TransferEvaluation

StoredExamples = list[tuple[str, bytes]]


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

    def results(self, cell: Cell, callback: Any) -> tuple[dict[str, float], StoredExamples]: ...


@dataclass(frozen=True)
class AttackCell:
    """One attack at one budget on one model: task metrics, perturbation statistics, quality, cost."""

    def callback(self, cell: Cell, models: Mapping[str, pl.LightningModule]) -> AdversarialEvaluation:
        evaluation = cell.evaluation
        return AdversarialEvaluation(
            [attack_spec(setting, cell.seed) for setting in cell.attacks],
            examples=evaluation.get("examples", 4),
            brisque=evaluation.get("brisque", True),
        )

    def results(self, cell: Cell, callback: AdversarialEvaluation) -> tuple[dict[str, float], StoredExamples]:
        prefix = f"adv/{cell.attack}/{budget_label(cell.budget)}/"
        metrics = {
            key.replace(prefix, "adv/", 1): value
            for key, value in callback.results.items()
            if key.startswith("clean/") or key.startswith(prefix)
        }
        if not any(key.startswith("adv/") for key in metrics):
            raise RuntimeError(f"the evaluation logged no {prefix}* metrics; it logged {sorted(callback.results)}")
        return metrics, [example_png(example) for example in callback.last_examples]


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
        )

    def results(self, cell: Cell, callback: TransferEvaluation) -> tuple[dict[str, float], StoredExamples]:
        tested = next(iter(spec.label for spec in cell.models))
        (rows,) = callback.matrix.values()
        metrics = {}
        for source, targets in rows.items():
            source_name = "+".join(tested if name == TESTED else name for name in source.split("+"))
            for target, rate in targets.items():
                metrics[f"{source_name}->{tested if target == TESTED else target}/success_rate"] = rate
        return metrics, []


@dataclass(frozen=True)
class DetectionCell:
    """Every attack of the study at one budget, and the KD/LID/DFeat/QFeat detectors trained across them."""

    def callback(self, cell: Cell, models: Mapping[str, pl.LightningModule]) -> AdversarialDetectionEvaluation:
        attacks = {
            setting.label: setting.build(cell.seed)
            for setting in cell.attacks
        }
        return AdversarialDetectionEvaluation(attacks, seed=cell.seed, **cell.study)

    def results(self, cell: Cell, callback: AdversarialDetectionEvaluation) -> tuple[dict[str, float],
                                                                                      StoredExamples]:
        return detection_metrics(DetectionReport(**callback.results)), []


CELL_KINDS: dict[str, CellKind] = {"attack": AttackCell(), "transfer": TransferCell(), "detection": DetectionCell()}
