"""AdversarialEvaluation: runs every configured attack at every budget on each test batch inside
``trainer.test`` and logs clean and adversarial task metrics (proportions with 95% Wilson intervals, means
over images with 95% bootstrap intervals), perturbation statistics, image quality and cost under
``clean/{metric}`` and ``adv/{attack}/{budget}/{metric}``, the per-sample worst case over the attacks of each
budget under ``adv/worst/{budget}/{metric}``, and the attack-failure checks under
``check/{attack}/{budget}/{name}`` (docs/metrics.md)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities import rank_zero_only, rank_zero_warn
from torch import Tensor, nn

from attacks.base import Attack, frozen_model, plain_setting
from attacks.budgets import MINIMAL, budget_label
from attacks.precision import check_precision
from callbacks.batch_size import AttackBatchSizes, attack_in_chunks, check_attack_batch_size
from callbacks.bootstrap import BootstrapIntervals, Parts, mean_parts, sample_keys
from callbacks.checks import (
    CellSummary,
    GradientEvidence,
    LossEvidence,
    ModelEvidence,
    averages_draws,
    cross_checks,
    verdicts,
)
from callbacks.distributed import gather_objects
from callbacks.examples import Example, examples_of
from callbacks.fit_data import fit_dataloader
from callbacks.metrics import PERTURBATION_MEANS, PerturbationStatistics, perturbation_parts
from callbacks.model_state import ModuleState
from callbacks.quality import AdversarialImageQuality, BRISQUEScore
from callbacks.robust_accuracy import RowsAttacked, attack_rows, correct_rows, stopping_early
from callbacks.speed import channels_last_images, channels_last_wanted, check_flag, evaluation_objective
from callbacks.task_scores import ClassificationTaskScores, TaskScores, task_scores
from callbacks.wandb_logging import log_analysis, log_examples, log_run_config, wandb_loggers
from callbacks.worst_case import worst_case_metrics

if TYPE_CHECKING:
    from callbacks.analysis import AdversarialAnalysis

AttackFactory = Callable[[float | None], Attack]


def metric_slot(key: str) -> str:
    """A metric name as a ModuleDict key (no dots allowed there)."""
    return key.replace(".", "_")


@dataclass(frozen=True)
class AttackSpec:
    """One attack of an evaluation: its name in metric names, a budget -> Attack factory, its budgets."""

    name: str
    build: AttackFactory
    budgets: tuple[float | None, ...]

    def instances(self) -> Iterator[tuple[str, Attack]]:
        """(``{name}/{budget}`` key, configured attack) for each budget."""
        for budget in self.budgets:
            yield f"{self.name}/{budget_label(budget)}", self.build(budget)


def attack_specs(
    attacks: Mapping[str, AttackFactory | tuple[AttackFactory, Sequence[float]]] | Sequence[AttackSpec],
    epsilons: Sequence[float] | None,
) -> list[AttackSpec]:
    """Normalise the callback's ``attacks`` argument: specs as given, or a name -> factory mapping whose
    values are a factory (run at ``epsilons``) or a (factory, budgets) pair."""
    if not isinstance(attacks, Mapping):
        return list(attacks)
    specs = []
    for name, value in attacks.items():
        factory, budgets = value if isinstance(value, tuple) else (value, epsilons)
        if not budgets:
            raise ValueError(f"attacks[{name!r}]: no budgets; pass epsilons= or a (factory, budgets) pair")
        specs.append(AttackSpec(name, factory, tuple(None if b is None else float(b) for b in budgets)))
    if not specs:
        raise ValueError("attacks must name at least one attack")
    return specs


def merged(per_rank: Sequence[Mapping[str, Mapping[str, float]]]) -> dict[str, dict[str, float]]:
    """The per-sample scores of every rank in one mapping (sample ids are unique across ranks)."""
    scores: dict[str, dict[str, float]] = {}
    for part in per_rank:
        for key, values in part.items():
            scores.setdefault(key, {}).update(values)
    return scores


def norms_key(key: str) -> str:
    """Where the per-sample minimal norms of the attack at ``key`` are kept among the sample scores."""
    return f"{key}/norms"


def minimal_norm_metrics(attacks: Mapping[str, Attack], sample_scores: Mapping[str, Mapping[str, float]]) -> dict:
    """``adv/{key}/median_norm`` (the lower median) of every attack that reported per-sample minimal norms
    (``extras["norms"]``: 0 for a sample misclassified clean, inf for one never fooled), and
    ``adv/{key}/unbroken``, the share of samples never fooled."""
    metrics = {}
    for key in attacks:
        norms = sample_scores.get(norms_key(key))
        if norms:
            values = torch.tensor(list(norms.values()), dtype=torch.float64)
            metrics[f"adv/{key}/median_norm"] = float(values.median())  # the lower median: inf-safe
            metrics[f"adv/{key}/unbroken"] = float(values.isinf().double().mean())
    return metrics


def unbounded(attack: Attack, key: str) -> bool:
    """Whether the attack at ``key`` has no effective bound: a minimal-norm attack (budget ``min``) or an
    Linf budget of 1 or more (the whole [0, 1] range)."""
    budget = key.rsplit("/", 1)[1]
    settings = attack.settings
    return budget == MINIMAL or (settings.get("norm", "linf") == "linf" and float(settings.get("eps", 0.0)) >= 1)


@rank_zero_only
def report(line: str) -> None:
    """A progress line of a long step (a universal perturbation's fit), printed by rank 0."""
    print(line, flush=True)


def detached_batch(batch: Mapping[str, Any]) -> tuple[Tensor, Any]:
    """Images and target as ordinary tensors (clones), usable by autograd even if made in inference mode."""
    def clone(value: Any) -> Any:
        if isinstance(value, Tensor):
            return value.clone()
        if isinstance(value, dict):
            return {k: clone(v) for k, v in value.items()}
        if isinstance(value, list):
            return [clone(v) for v in value]
        return value

    return clone(batch["image"]), clone(batch["target"])


class AdversarialEvaluation(pl.Callback):
    """Clean vs adversarial evaluation of a task LightningModule during ``trainer.test``.

    ``attacks`` maps names to budget -> Attack factories (e.g. ``{"pgd": lambda e: PGD(eps=e)}``)
    run at every budget in ``epsilons``, or to (factory, budgets) pairs. Works under Lightning's default
    ``inference_mode=True`` and leaves the module's mode and gradient flags as it found them. Under DDP the
    metrics are torchmetrics sum states, so N processes give the numbers of one (given a test sampler
    that does not pad, as the project's datamodules provide). Lightning's ``Trainer(limit_test_batches=...)``
    bounds the batches evaluated, clean and attacked alike. With a WandbLogger it also logs the attack
    settings into the run config and a table of ``examples`` triplets per attack from the first batch.

    Speed options (docs/performance.md): ``precision`` ("32", "bf16-mixed", "16-mixed") runs every forward
    and backward under autocast with fp32 outputs, perturbations and steps; ``channels_last`` (None: on
    for conv nets on CUDA) converts the module and the images, and the module's formats are restored after
    the test; ``compile`` runs the forward through torch.compile; ``attack_batch_size`` attacks each batch
    in chunks of that size, or of the largest size that fits in GPU memory ("auto").

    ``robust_accuracy_only`` (classification; ignored for other tasks): each attack runs only on the samples
    classified correctly when clean, rebuilt with ``early_stop`` where it takes it, so it stops a sample once
    fooled; the others count as non-robust (docs/metrics.md, "Robust-accuracy mode"). Accuracy and success rate
    keep their definitions; perturbation, quality and cost are then means over the attacked samples.

    ``analysis`` (``callbacks.analysis.AdversarialAnalysis``) gets each attack's first batch on rank 0 and adds
    its metrics (landscape sharpness, attribution shift) to the results.
    """

    def __init__(
        self,
        attacks: Mapping[str, AttackFactory | tuple[AttackFactory, Sequence[float]]] | Sequence[AttackSpec],
        epsilons: Sequence[float] | None = None,
        examples: int = 4,
        brisque: bool = True,
        precision: str = "32",
        channels_last: bool | None = None,
        compile: bool = False,
        attack_batch_size: int | str | AttackBatchSizes | None = None,
        robust_accuracy_only: bool = False,
        analysis: AdversarialAnalysis | None = None,
    ) -> None:
        super().__init__()
        self.analysis = analysis
        self.precision = check_precision(precision)
        check_flag("channels_last", channels_last, allow_none=True)
        check_flag("compile", compile)
        check_flag("robust_accuracy_only", robust_accuracy_only)
        self.robust_accuracy_only = robust_accuracy_only
        self.attacking_correct = False
        self.channels_last = channels_last
        self.compile = compile
        self.attack_batch_size = check_attack_batch_size(attack_batch_size)
        self.use_channels_last = False
        self.borrowed: ModuleState | None = None
        self.specs = attack_specs(attacks, epsilons)
        self.attacks: dict[str, Attack] = dict(
            instance for spec in self.specs for instance in spec.instances()
        )
        self.examples = examples
        self.with_brisque = brisque
        self.example_rows: list[Example] = []
        self.last_examples: list[Example] = []
        self.results: dict[str, float] = {}
        self.checks: dict[str, dict[str, str]] = {}
        self.sample_scores: dict[str, dict[str, float]] = {}

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "test":
            return
        self.use_channels_last = channels_last_wanted(self.channels_last, pl_module, pl_module.device)
        if self.use_channels_last:
            self.borrowed = ModuleState.of(pl_module)
            pl_module.to(memory_format=torch.channels_last)
        self.scores = nn.ModuleDict(
            {"clean": task_scores(pl_module, attacked=False)}
            | {metric_slot(key): task_scores(pl_module) for key in self.attacks}
        ).to(pl_module.device)
        classifying = isinstance(self.scores["clean"], ClassificationTaskScores)
        self.attacking_correct = self.robust_accuracy_only and classifying
        if self.attacking_correct:
            self.attacks = {key: stopping_early(attack) for key, attack in self.attacks.items()}
        self.perturbation = nn.ModuleDict(
            {metric_slot(key): PerturbationStatistics() for key in self.attacks}
        ).to(pl_module.device)
        self.quality = nn.ModuleDict(
            {metric_slot(key): AdversarialImageQuality(self.with_brisque) for key in self.attacks}
        ).to(pl_module.device)
        self.clean_brisque = BRISQUEScore().to(pl_module.device) if self.with_brisque else None
        means = self.scores["clean"].mean_metrics
        attacked_means = (*means, *PERTURBATION_MEANS, *next(iter(self.quality.values())).names)
        self.intervals = nn.ModuleDict(
            {"clean": BootstrapIntervals(means)}
            | {metric_slot(key): BootstrapIntervals(attacked_means) for key in self.attacks}
        ).to(pl_module.device)
        self.sample_scores = {}
        if self.analysis is not None:
            self.analysis.reset()
        self.model_evidence = ModelEvidence().to(pl_module.device)
        self.gradient_evidence = GradientEvidence(self.attacks).to(pl_module.device)
        self.loss_evidence = nn.ModuleDict({metric_slot(key): LossEvidence() for key in self.attacks}).to(
            pl_module.device
        )

    def on_test_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Build the objective every forward pass runs through (precision, compile), then fit data-dependent
        attacks (universal perturbations) on the training split."""
        self.objective = evaluation_objective(pl_module.objective(), self.precision, self.compile)
        fittable = [attack for attack in self.attacks.values() if hasattr(attack, "fit")]
        if not fittable:
            return
        loader = fit_dataloader(trainer.datamodule, "universal attacks")
        with torch.inference_mode(False), torch.enable_grad():
            for attack in fittable:
                attack.fit(self.objective, loader, progress=report)

    def on_test_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        with torch.inference_mode(False), torch.enable_grad():
            images, target = detached_batch(batch)
            if self.use_channels_last:
                images = channels_last_images(images)
            objective = self.objective
            with torch.no_grad():
                clean_outputs = objective.forward(images)
            clean: TaskScores = self.scores["clean"]
            clean.update_scores(objective, clean_outputs, target)
            keys = sample_keys(batch["id"], images.device)
            self.intervals["clean"].update(keys, clean.per_image_parts(objective, clean_outputs, target))
            self.keep_sample_scores("clean", clean.per_sample(objective, clean_outputs, target), batch["id"])
            if self.clean_brisque is not None:
                self.clean_brisque.update(images)
            if batch_idx == 0:  # the model-level checks read each process's first batch: evidence enough
                with frozen_model(objective.model):
                    self.model_evidence.update(objective, images, clean_outputs)
                    self.gradient_evidence.update(objective, images, target)
            rows = correct_rows(objective.predict(clean_outputs), target) if self.attacking_correct else None
            for key, attack in self.attacks.items():
                size = self.chunk_size(attack, objective, images, target, batch["id"])
                run = partial(attack_in_chunks, attack, objective, size=size)
                start = time.perf_counter()
                attacked = attack_rows(run, images, target, batch["id"], rows)
                seconds = time.perf_counter() - start
                with torch.no_grad():
                    adv_outputs = attacked.outputs(objective.forward, clean_outputs)
                slot = metric_slot(key)
                scores: TaskScores = self.scores[slot]
                scores.update_scores(objective, adv_outputs, target)
                scores.update_success(objective, clean_outputs, adv_outputs, target, attacked.extra("goal"))
                self.keep_sample_scores(key, scores.per_sample(objective, adv_outputs, target), batch["id"])
                self.keep_sample_scores(norms_key(key), attacked.extra("norms"), batch["id"])
                self.intervals[slot].update(
                    keys,
                    scores.per_image_parts(objective, adv_outputs, target)
                    | self.update_perturbation(slot, attacked, images, seconds),
                )
                if batch_idx == 0 and trainer.is_global_zero:
                    self.example_rows += examples_of(
                        key, batch["id"], images, attacked.adv_images, target,
                        objective.predict(clean_outputs), objective.predict(adv_outputs), self.examples,
                    )
                    if self.analysis is not None:
                        self.analysis.observe(key, pl_module, images, target, attacked.adv_images)

    def on_test_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        clean_values = self.scores["clean"].compute_scores() | self.intervals["clean"].compute()
        if self.clean_brisque is not None:
            clean_values["brisque"] = self.clean_brisque.compute()
        self.results = {f"clean/{name}": float(value) for name, value in clean_values.items()}
        model_evidence = self.model_evidence.compute()
        gradient_evidence = self.gradient_evidence.compute()
        for key, attack in self.attacks.items():
            slot = metric_slot(key)
            values = self.scores[slot].compute_scores()
            values |= self.scores[slot].drops(clean_values, values)
            values |= self.perturbation[slot].compute()
            values |= self.quality[slot].compute()
            values |= self.intervals[slot].compute()
            values |= getattr(attack, "fit_summary", {})
            self.results |= {f"adv/{key}/{name}": float(value) for name, value in values.items()}
            evidence = model_evidence | gradient_evidence[key] | self.loss_evidence[slot].compute()
            if averages_draws(attack):
                evidence.pop("check/random_model")
            if unbounded(attack, key):
                evidence["check/unbounded_not_broken"] = values[self.scores[slot].headline[0]]
            self.results |= {f"check/{key}/{name.removeprefix('check/')}": float(v) for name, v in evidence.items()}
        self.sample_scores = merged(gather_objects(trainer, self.sample_scores))
        clean = self.scores["clean"]
        if clean.per_sample_metric is not None:
            binary = clean.per_sample_metric == "accuracy"
            self.results |= worst_case_metrics(self.attacks, self.sample_scores, clean.per_sample_metric, binary)
        self.results |= minimal_norm_metrics(self.attacks, self.sample_scores)
        self.results |= self.analysis.metrics() if self.analysis is not None else {}
        for name, value in self.results.items():
            pl_module.log(name, value, rank_zero_only=True)
        self.checks = self.check_verdicts()
        for metrics in (*self.scores.values(), *self.perturbation.values(), *self.quality.values(),
                        *self.intervals.values(), *self.loss_evidence.values(), self.model_evidence,
                        self.gradient_evidence):
            metrics.reset()
        if self.clean_brisque is not None:
            self.clean_brisque.reset()
        if trainer.is_global_zero:
            for key, found in self.checks.items():
                for name, verdict in found.items():
                    if verdict != "pass":
                        rank_zero_warn(f"attack check {name} on {key}: {verdict.removeprefix('warn: ')}")
            for logger in wandb_loggers(trainer.loggers):
                config = {"attacks": self.settings(), "evaluation": self.evaluation_settings(), "checks": self.checks}
                log_run_config(logger, config)
                log_examples(logger, self.example_rows)
                if self.analysis is not None:
                    log_analysis(logger, self.analysis)
        self.last_examples, self.example_rows = self.example_rows, []

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage == "test":
            self.hand_back(pl_module)

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        self.hand_back(pl_module)

    def hand_back(self, pl_module: pl.LightningModule) -> None:
        """Give the module back in the memory format (and modes, flags, device) it had at setup."""
        if self.borrowed is not None:
            self.borrowed.restore(pl_module)
            self.borrowed = None

    def update_perturbation(self, slot: str, attacked: RowsAttacked, images: Tensor, seconds: float) -> Parts:
        """Add the attacked rows' perturbation statistics, image quality and loss evidence; return their per-image
        parts over the whole batch (NaN for the rows not attacked)."""
        result = attacked.result
        if result is None:
            empty = torch.empty(0, device=images.device)
            names = (*PERTURBATION_MEANS, *self.quality[slot].names)
            return attacked.spread({name: (empty, empty) for name in names}, images.device)
        clean = attacked.clean(images)
        perturbation = result.perturbation(clean)
        self.perturbation[slot].update(perturbation, result.trace, seconds)
        self.loss_evidence[slot].update(result.trace)
        quality = self.quality[slot].update(result.adv_images, clean)
        parts = perturbation_parts(perturbation, result.trace) | {name: mean_parts(v) for name, v in quality.items()}
        return attacked.spread(parts, images.device)

    def chunk_size(self, attack: Attack, objective: Any, images: Tensor, target: Any, ids: Sequence[str]) -> int:
        """The attack's chunk: the whole batch, the fixed ``attack_batch_size``, or the size found for it."""
        if isinstance(self.attack_batch_size, AttackBatchSizes):
            return self.attack_batch_size.size(attack, objective, images, target, ids)
        return self.attack_batch_size or len(images)

    def keep_sample_scores(self, key: str, scores: Tensor | None, ids: Sequence[str]) -> None:
        """Remember each sample's score under ``key`` (``clean`` or an attack key), by sample id."""
        if scores is not None:
            self.sample_scores.setdefault(key, {}).update(zip(ids, scores.tolist(), strict=True))

    def check_verdicts(self) -> dict[str, dict[str, str]]:
        """``{attack key: {check: "pass" | "warn: reason"}}``: each attack's per-cell checks, and the checks
        across this evaluation's attacks and budgets (``callbacks.checks.cross_checks``)."""
        found = {key: verdicts(self.results, f"check/{key}/") for key in self.attacks}
        summaries = []
        for key, attack in self.attacks.items():
            label, budget = key.rsplit("/", 1)
            settings = attack.settings
            score = self.results.get(f"adv/{key}/{self.scores['clean'].headline[0]}", float("nan"))
            summaries.append(CellSummary(label, budget, attack.name, attack.access, int(settings.get("steps", 1)),
                                         settings.get("norm"), score))
        for cell, name, reason in cross_checks(summaries):
            found[f"{cell.attack}/{cell.budget}"][name] = f"warn: {reason}"
        return found

    def settings(self) -> dict[str, Any]:
        """Each attack's class and full settings (``Attack.settings``) per ``{name}/{budget}`` key."""
        return {key: plain_setting(attack) for key, attack in self.attacks.items()}

    def evaluation_settings(self) -> dict[str, Any]:
        """How the model ran: precision, channels_last (as decided at setup), compile, attack batch size, and
        whether only the samples classified correctly were attacked (robust-accuracy mode, as decided at setup)."""
        batch_size = "auto" if isinstance(self.attack_batch_size, AttackBatchSizes) else self.attack_batch_size
        return {"precision": self.precision, "channels_last": self.use_channels_last, "compile": self.compile,
                "attack_batch_size": batch_size, "robust_accuracy_only": self.attacking_correct}
