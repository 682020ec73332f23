"""TransferEvaluation: the transfer matrix of the adversarial-exposure paper (Table 1): adversarial
examples crafted on each source model (or ensemble) and evaluated on every target model, white-box on
the diagonal, as attack success rates."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import lightning.pytorch as pl
import torch
from torch import nn

from attacks.base import AttackResult
from attacks.precision import check_precision, with_precision
from attacks.transfer import EnsembleObjective, TransferAttack
from callbacks.attack_eval import AttackFactory, AttackSpec, attack_specs, detached_batch, metric_slot
from callbacks.metrics import AttackSuccess
from callbacks.model_state import ModuleState
from callbacks.wandb_logging import wandb_loggers

TESTED = "tested"


def success_key(attack: str, source: str, target: str) -> str:
    return f"{attack}/{source}->{target}"


class TransferEvaluation(pl.Callback):
    """Craft with every source, evaluate on every target, during ``trainer.test`` of a classifier.

    ``models`` maps names to classifier LightningModules; the module under test joins them as
    ``tested``. ``sources`` names the crafting models (a list of names crafts on their ensemble, named
    ``a+b``); ``targets`` names the evaluated ones (default: all). Results: success rate among samples the
    target classifies correctly when clean, logged as ``transfer/{attack}/{budget}/{source}->{target}/
    success_rate`` and kept in ``self.matrix`` ({attack key: {source: {target: rate}}}). The ``models`` are
    moved to the tested module's device in eval mode for the test and handed back as they were after it.
    ``precision`` ("32", "bf16-mixed", "16-mixed") runs every model's forward and backward under autocast
    with fp32 outputs (``attacks.precision.MixedPrecisionObjective``).
    """

    def __init__(
        self,
        attacks: Mapping[str, AttackFactory | tuple[AttackFactory, Sequence[float]]] | Sequence[AttackSpec],
        models: Mapping[str, pl.LightningModule],
        epsilons: Sequence[float] | None = None,
        sources: Sequence[str | Sequence[str]] | None = None,
        targets: Sequence[str] | None = None,
        precision: str = "32",
    ) -> None:
        super().__init__()
        self.precision = check_precision(precision)
        if TESTED in models:
            raise ValueError(f"models: the name {TESTED!r} is reserved for the module under test")
        self.models = dict(models)
        self.attacks = dict(instance for spec in attack_specs(attacks, epsilons) for instance in spec.instances())
        names = [TESTED, *self.models]
        self.sources = [[s] if isinstance(s, str) else list(s) for s in (sources or names)]
        self.targets = list(targets or names)
        for name in [n for group in self.sources for n in group] + self.targets:
            if name not in names:
                raise ValueError(f"unknown model {name!r} in sources/targets; models: {names}")
        self.matrix: dict[str, dict[str, dict[str, float]]] = {}
        self.borrowed: dict[str, ModuleState] = {}

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "test":
            return
        self.borrowed = {name: ModuleState.of(model) for name, model in self.models.items()}
        for model in self.models.values():
            model.to(pl_module.device).eval()
        self.success = nn.ModuleDict(
            {
                metric_slot(success_key(key, "+".join(source), target)): AttackSuccess()
                for key in self.attacks
                for source in self.sources
                for target in self.targets
            }
        ).to(pl_module.device)

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage == "test":
            self._hand_back()

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        self._hand_back()

    def _hand_back(self) -> None:
        """Restore each source model's device, modes and gradient flags as recorded at setup."""
        for name, state in self.borrowed.items():
            state.restore(self.models[name])
        self.borrowed = {}

    def _objective(self, name: str, pl_module: pl.LightningModule) -> Any:
        return with_precision((pl_module if name == TESTED else self.models[name]).objective(), self.precision)

    def _surrogate(self, source: list[str], pl_module: pl.LightningModule) -> Any:
        objectives = [self._objective(name, pl_module) for name in source]
        return objectives[0] if len(objectives) == 1 else EnsembleObjective(objectives)

    def on_test_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        with torch.inference_mode(False), torch.enable_grad():
            images, target = detached_batch(batch)
            evaluated = {name: self._objective(name, pl_module) for name in self.targets}
            with torch.no_grad():
                clean = {name: o.predict(o.forward(images)) for name, o in evaluated.items()}
            for key, attack in self.attacks.items():
                for source in self.sources:
                    transfer = TransferAttack(attack, self._surrogate(source, pl_module))
                    result: AttackResult = transfer(evaluated[self.targets[0]], images, target, ids=batch["id"])
                    with torch.no_grad():
                        for name, objective in evaluated.items():
                            adversarial = objective.predict(objective.forward(result.adv_images))
                            slot = metric_slot(success_key(key, "+".join(source), name))
                            self.success[slot].update(clean[name], adversarial, target, None)

    def on_test_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.matrix = {}
        for key in self.attacks:
            for source in self.sources:
                row = self.matrix.setdefault(key, {}).setdefault("+".join(source), {})
                for target in self.targets:
                    name = success_key(key, "+".join(source), target)
                    metric = self.success[metric_slot(name)]
                    row[target] = float(metric.compute()["success_rate"])
                    pl_module.log(f"transfer/{name}/success_rate", row[target], rank_zero_only=True)
                    metric.reset()
        if trainer.is_global_zero:
            for logger in wandb_loggers(trainer.loggers):
                self._log_table(logger)

    def _log_table(self, logger: Any) -> None:
        import wandb

        pairs = [f"{source}->{target}" for source in map("+".join, self.sources) for target in self.targets]
        columns = ["attack", *pairs]
        table = wandb.Table(columns=columns)
        for key, rows in self.matrix.items():
            table.add_data(key, *(rows[source][target] for source in rows for target in self.targets))
        logger.experiment.log({"transfer/matrix": table})
