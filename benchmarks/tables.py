"""Benchmark cells as tables in the papers' layouts (rows attacks, columns budgets; SMIA's Var/Cos; the
exposure paper's success rate with SSIM/BRISQUE and transfer matrices; Ma et al.'s detector AUCs), each
number the mean over seeds with its standard deviation, and the per-cell listing of ``medadv results``
with its CSV and Markdown exports. Pure data: no plotting, no HTML."""

from __future__ import annotations

import csv
import math
import statistics
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import astuple, dataclass, fields, replace
from pathlib import Path
from typing import Any

import torch

from attacks.budgets import budget_text, budget_value
from attacks.registry import attack_entry
from benchmarks.store import CellRecord, Protected, SampleScores, atomic_write, check_output
from callbacks.bootstrap import bootstrap_interval, mean_parts
from callbacks.checks import CellSummary, cross_checks, verdicts
from callbacks.detector_features import DETECTORS
from callbacks.intervals import wilson_interval
from callbacks.worst_case import threat_group, worst_scores

TASK_METRICS = {
    "classification": ("accuracy", "auc", "fpr"),
    "segmentation": ("jaccard", "dice", "pixel_accuracy"),
    "detection": ("map", "map_50", "mean_iou"),
}
METRIC_NAMES = {
    "accuracy": "accuracy", "auc": "AUC", "fpr": "FPR", "jaccard": "Jaccard", "dice": "Dice",
    "pixel_accuracy": "pixel accuracy", "map": "mAP", "map_50": "mAP@0.5", "mean_iou": "matched-box IoU",
    "success_rate": "success rate", "targeted_success_rate": "targeted success rate",
    "image_jaccard": "per-image Jaccard",
    "image_recall": "per-image recall",
}
QUALITY_COLUMNS = (
    ("adv/success_rate", "success rate"), ("adv/ssim", "SSIM"), ("adv/psnr", "PSNR (dB)"),
    ("adv/brisque", "BRISQUE"),
)
PERTURBATION_COLUMNS = (
    ("adv/var", "Var"), ("adv/cos_positive", "Cos > 0"), ("adv/cos_mean", "mean Cos"), ("adv/linf", "Linf"),
    ("adv/l2", "L2"), ("adv/queries", "queries"), ("adv/seconds_per_image", "s / image"),
)
# Each task's scores under attack side by side (item 10 of the segmentation/detection issue): segmentation
# overlap, boundary distance and overlap by structure size; detection precision and the effects on the objects.
TASK_COLUMNS = {
    "segmentation": (
        ("jaccard", "Jaccard"), ("dice", "Dice"), ("hd95", "HD95 (px)"), ("pixel_accuracy", "pixel accuracy"),
        ("jaccard_small", "Jaccard small"), ("jaccard_medium", "Jaccard medium"), ("jaccard_large", "Jaccard large"),
    ),
    "detection": (
        ("map", "mAP"), ("map_50", "mAP@0.5"), ("disappearance_rate", "disappeared"),
        ("hallucinations_per_image", "hallucinations / image"), ("misclassification_rate", "mislabelled"),
        ("true_positive_rate", "TP rate"),
    ),
}
TASK_NOTES = {
    "segmentation": "HD95: 95th-percentile Hausdorff distance in pixels. small / medium / large: the images in each "
    "tercile of ground-truth foreground area (docs/metrics.md).",
    "detection": "disappeared, mislabelled, TP rate: shares of the ground-truth objects (IoU >= 0.5, score > 0.5); "
    "hallucinations: detections overlapping no object, per image (docs/metrics.md).",
}
DETECTOR_TITLES = {name: spec.title for name, spec in DETECTORS.items()}
PAIR_SPLITS = {"advtrain": "AdvTrain pairs", "advtest": "AdvTest pairs"}
MISSING = "–"


def number_spec(lead: float, *others: float) -> str:
    """The format spec of numbers shown together, chosen by the first: scientific below 0.01, whole numbers
    from 2 as integers (when all are whole), two decimals from 10, else three."""
    if lead != 0 and abs(lead) < 0.01:
        return ".2e"
    if abs(lead) >= 2 and all(float(v).is_integer() for v in (lead, *others)):
        return ".0f"
    return ".2f" if abs(lead) >= 10 else ".3f"


def format_number(value: float) -> str:
    """A number as the report shows it (see :func:`number_spec`)."""
    return format(value, number_spec(value))


@dataclass(frozen=True)
class Summary:
    """Mean and sample standard deviation of one metric over seeds (std shown only for several seeds); for
    one seed, the 95% interval the cell stored with it, if any, shown as ``0.412 [0.370, 0.450]``."""

    mean: float
    std: float
    count: int
    interval: tuple[float, float] | None = None

    @classmethod
    def of(cls, values: Sequence[float], interval: tuple[float, float] | None = None) -> Summary | None:
        """The summary of one value per seed (with the interval of a single value); None for no values."""
        if not values:
            return None
        if len(values) > 1:
            return cls(statistics.fmean(values), statistics.stdev(values), len(values))
        return cls(values[0], 0.0, 1, interval)

    def __str__(self) -> str:
        if self.count == 1 and self.interval is not None:
            spec = number_spec(self.mean, *self.interval)
            return f"{self.mean:{spec}} [{self.interval[0]:{spec}}, {self.interval[1]:{spec}}]"
        if self.count == 1:
            return format_number(self.mean)
        spec = number_spec(self.mean, self.std)
        return f"{self.mean:{spec}} ± {self.std:{spec}}" if self.std else f"{self.mean:{spec}} ± 0"


Entry = str | Summary | None


def entry_text(entry: Entry) -> str:
    """A table entry as text: a summary as ``mean ± std``, a missing value as a dash."""
    return MISSING if entry is None else str(entry)


@dataclass(frozen=True)
class Table:
    """A titled grid: ``header`` names the columns, each row starts with its label(s); ``note`` explains."""

    title: str
    header: tuple[str, ...]
    rows: tuple[tuple[Entry, ...], ...]
    note: str = ""


def unique(values: Iterable[Any]) -> list[Any]:
    """The distinct values in order of first appearance."""
    return list(dict.fromkeys(values))


def select(records: Iterable[CellRecord], **fields: Any) -> list[CellRecord]:
    """The records whose attributes equal all the given values."""
    return [r for r in records if all(getattr(r, name) == value for name, value in fields.items())]


def budget_order(label: str) -> tuple[bool, float, str]:
    """Sort key of budget labels: by numeric value, labels without one (``min``) last."""
    value = budget_value(label)
    return value is None, value or 0.0, label


def ordered_budgets(labels: Iterable[str]) -> list[str]:
    """Distinct budget labels in :func:`budget_order`."""
    return sorted(set(labels), key=budget_order)


def in_grid_order(records: Sequence[CellRecord]) -> list[CellRecord]:
    """Records by attack (in order of first appearance), budget (:func:`budget_order`), then seed."""
    attacks = unique(r.attack for r in records)
    return sorted(records, key=lambda r: (attacks.index(r.attack), budget_order(r.budget), r.seed))


def summarize(records: Iterable[CellRecord], key: str) -> Summary | None:
    """Mean ± std over seeds of ``metrics[key]`` (values of one seed are averaged first; NaN skipped); a
    single cell's value keeps its stored ``{key}_ci_low`` / ``{key}_ci_high`` interval."""
    by_seed: dict[int, list[float]] = {}
    found = []
    for record in records:
        value = record.metrics.get(key)
        if value is not None and math.isfinite(value):
            by_seed.setdefault(record.seed, []).append(value)
            found.append(record)
    interval = None
    if len(found) == 1:
        low, high = (found[0].metrics.get(f"{key}_ci_{end}") for end in ("low", "high"))
        interval = (low, high) if low is not None and high is not None else None
    return Summary.of([statistics.fmean(values) for values in by_seed.values()], interval)


def task_of(records: Iterable[CellRecord]) -> str | None:
    """The task of attack cells: ``settings["task"]``, else the task whose clean metrics they hold."""
    for record in records:
        if "task" in record.settings:
            return record.settings["task"]
        for task, metrics in TASK_METRICS.items():
            if f"clean/{metrics[0]}" in record.metrics:
                return task
    return None


def budget_table(records: Sequence[CellRecord], metric: str, clean: bool) -> Table | None:
    """``adv/{metric}`` with rows attacks and columns budgets, after a ``clean`` row of ``clean/{metric}``
    when asked (the layout of SMIA's Tables 2-3). None when no record has the metric."""
    records = [r for r in records if f"adv/{metric}" in r.metrics]
    if not records:
        return None
    budgets = ordered_budgets(r.budget for r in records)
    rows = [("clean", *(summarize(select(records, budget=b), f"clean/{metric}") for b in budgets))] if clean else []
    rows += [
        (attack, *(summarize(select(records, attack=attack, budget=b), f"adv/{metric}") for b in budgets))
        for attack in unique(r.attack for r in records)
    ]
    name = METRIC_NAMES.get(metric, metric)
    return Table(f"Adversarial {name}", ("attack", *map(budget_text, budgets)), tuple(rows))


def attack_budget_table(
    records: Sequence[CellRecord], title: str, columns: Sequence[tuple[str, str]], note: str = "",
    clean: bool = False,
) -> Table | None:
    """One row per attack and budget, one column per ``(metric key, header)`` that any record holds; first a
    ``clean`` row of the ``clean/`` values of the ``adv/`` keys when asked."""
    columns = [(key, header) for key, header in columns if any(key in r.metrics for r in records)]
    if not columns:
        return None
    one_per_seed = list({r.seed: r for r in records}.values())  # the clean values are the seed's, in every cell
    clean_keys = [key.replace("adv/", "clean/", 1) for key, _ in columns]
    rows = [("clean", MISSING, *(summarize(one_per_seed, key) for key in clean_keys))] if clean else []
    rows += [
        (attack, budget_text(budget), *(summarize(select(records, attack=attack, budget=budget), key)
                                        for key, _ in columns))
        for attack, budget in unique((r.attack, r.budget) for r in in_grid_order(records))
    ]
    return Table(title, ("attack", "budget", *(header for _, header in columns)), tuple(rows), note)


def quality_table(records: Sequence[CellRecord]) -> Table | None:
    """Success rate next to SSIM, PSNR and BRISQUE of the adversarial images (the exposure paper)."""
    clean = summarize(records, "clean/brisque")
    note = f"BRISQUE of the clean images: {clean}. Lower BRISQUE is more natural." if clean else ""
    return attack_budget_table(records, "Image quality of the adversarial examples", QUALITY_COLUMNS, note)


def perturbation_table(records: Sequence[CellRecord]) -> Table | None:
    """SMIA's perturbation variance and update consistency (share of positive cosines), norms and cost."""
    note = "Cos > 0: share of consecutive perturbation updates with positive cosine (SMIA's Cos)."
    return attack_budget_table(records, "Perturbation Var/Cos, norms and cost", PERTURBATION_COLUMNS, note)


def task_table(records: Sequence[CellRecord]) -> Table | None:
    """A segmentation or detection model's scores clean and under each attack and budget (``TASK_COLUMNS``)."""
    task = task_of(records) or ""
    if task not in TASK_COLUMNS:
        return None
    columns = [(f"adv/{metric}", header) for metric, header in TASK_COLUMNS[task]]
    return attack_budget_table(records, f"{task.capitalize()} under attack", columns, TASK_NOTES[task], clean=True)


def model_tables(records: Sequence[CellRecord]) -> list[Table]:
    """Every table of one model's attack cells: task metrics, success rates, quality, perturbations."""
    metrics = TASK_METRICS.get(task_of(records) or "", ())
    tables = [task_table(records), *(budget_table(records, metric, clean=True) for metric in metrics)]
    tables += [budget_table(records, metric, clean=False) for metric in ("success_rate", "targeted_success_rate")]
    tables += [checks_table(records), quality_table(records), perturbation_table(records), settings_table(records)]
    return [table for table in tables if table is not None]


PER_SAMPLE_METRICS = {"classification": "accuracy", "segmentation": "image_jaccard", "detection": "image_recall"}
SamplesOf = Callable[[str], SampleScores]


@dataclass(frozen=True)
class WorstCase:
    """The worst case over the attacks of one budget and norm: clean and worst-case score (one seed with its
    95% interval, several as mean ± std), how many attacks were pooled and the strongest single one."""

    budget: str
    norm: str
    clean: Summary
    worst: Summary
    attacks: int
    strongest: str
    strongest_score: float


def worst_cases(records: Sequence[CellRecord], samples_of: SamplesOf) -> list[WorstCase]:
    """For each budget (and norm), each sample counts as robust only if every attack cell at that budget failed
    on it (classification: correct under all; segmentation: the image's lowest Jaccard; detection: its lowest
    recall). The interval of one seed is Wilson's for accuracy, the bootstrap's over images for a mean score."""
    metric = PER_SAMPLE_METRICS.get(task_of(records) or "")
    if metric is None:
        return []
    groups: dict[tuple[str, str], list[CellRecord]] = {}
    for record in in_grid_order(records):
        for attack in record.settings.get("attacks", []):
            group = threat_group(attack["settings"], record.budget)
            if group is not None:
                groups.setdefault((group, record.budget), []).append(record)
    cases = []
    for (group, budget), cells in groups.items():
        clean, worst, samples, single = [], [], [], {}
        for seed in unique(r.seed for r in cells):
            scores = {r.attack: samples_of(r.key) for r in cells if r.seed == seed}
            adversarial = [found["adv"] for found in scores.values() if "adv" in found]
            if not adversarial:
                continue
            per_sample = worst_scores(adversarial)
            clean_scores = next(found["clean"] for found in scores.values() if "clean" in found)
            clean.append(statistics.fmean(clean_scores[sample] for sample in per_sample))
            worst.append(statistics.fmean(per_sample.values()))
            samples.append(torch.tensor(list(per_sample.values()), dtype=torch.float64))
            for attack, found in scores.items():
                single.setdefault(attack, []).append(statistics.fmean(found["adv"].values()))
        if not worst:
            continue
        interval = None
        if len(worst) == 1 and metric == "accuracy":
            low, high = wilson_interval(samples[0].sum(), torch.tensor(float(len(samples[0]))))
            interval = (float(low), float(high))
        elif len(worst) == 1:
            interval = bootstrap_interval(*mean_parts(samples[0]))
        strongest = min(single, key=lambda attack: statistics.fmean(single[attack]))
        norm = group.removeprefix("worst").removeprefix("_") or "linf"
        cases.append(WorstCase(budget, norm, Summary.of(clean), Summary.of(worst, interval), len(single),
                               strongest, statistics.fmean(single[strongest])))
    return cases


def worst_case_table(cases: Sequence[WorstCase], task: str | None) -> Table | None:
    """The headline: the worst case over attacks per budget (:func:`worst_cases`), beside the clean score
    and the strongest single attack."""
    if not cases:
        return None
    rows = tuple((f"{budget_text(c.budget)} ({c.norm})", c.clean, c.worst, str(c.attacks),
                  f"{c.strongest} ({c.strongest_score:.3f})") for c in cases)
    metric = PER_SAMPLE_METRICS[task]
    name = METRIC_NAMES.get(metric, metric)
    note = ("A sample is robust at a budget only if every attack there failed on it (Croce & Hein 2020); "
            "attacks of other norms or budgets, minimal-norm and exposure attacks are not pooled.")
    return Table(f"Worst case over attacks: {name}", ("budget", f"clean {name}", f"worst-case {name}", "attacks",
                                                      "strongest single attack"), rows, note)


def headline_tables(records: Sequence[CellRecord], samples_of: SamplesOf) -> list[Table]:
    """The worst-case table of every attacked model, per benchmark and dataset, titled with all three."""
    tables = []
    attacked = [r for r in records if r.kind == "attack"]
    for benchmark, dataset, model in unique((r.benchmark, r.dataset, r.model) for r in attacked):
        group = select(attacked, benchmark=benchmark, dataset=dataset, model=model)
        table = worst_case_table(worst_cases(group, samples_of), task_of(group))
        if table is not None:
            tables.append(replace(table, title=f"{table.title} ({benchmark} / {dataset} / {model})"))
    return tables


def cell_summary(record: CellRecord, metric: str) -> CellSummary | None:
    """An attack cell as the cross-cell checks see it; None for a cell without its stored attack."""
    attacks = record.settings.get("attacks") or []
    if len(attacks) != 1 or f"adv/{metric}" not in record.metrics:
        return None
    (attack,) = attacks
    try:
        access = attack_entry(attack["name"]).cls.access
    except ValueError:
        access = "white-box"
    settings = attack["settings"]
    return CellSummary(record.attack, record.budget, attack["name"], access, int(settings.get("steps", 1)),
                       settings.get("norm"), record.metrics[f"adv/{metric}"])


def checks_table(records: Sequence[CellRecord]) -> Table | None:
    """The attack-failure checks that warn (``callbacks.checks``): each cell's own, then those across
    attacks and budgets of each seed; a single row saying so when every check passed."""
    metric = TASK_METRICS.get(task_of(records) or "", ("accuracy",))[0]
    rows: list[tuple[Entry, ...]] = []
    checked = 0
    for record in in_grid_order(records):
        found = verdicts(record.metrics)
        checked += len(found)
        rows += [(f"{record.attack} at {budget_text(record.budget)}", name, verdict.removeprefix("warn: "))
                 for name, verdict in found.items() if verdict != "pass"]
    for seed in unique(r.seed for r in records):
        summaries = [s for r in select(records, seed=seed) if (s := cell_summary(r, metric))]
        rows += [(f"{cell.attack} at {budget_text(cell.budget)}", name, reason)
                 for cell, name, reason in cross_checks(summaries)]
    if not checked and not rows:
        return None
    note = "Checks: Carlini et al. 2019, Pintor et al. 2022, AutoAttack's; docs/metrics.md lists them."
    return Table("Attack-failure checks", ("cell", "check", "warning"),
                 tuple(rows) or (("every cell", "all checks", "passed"),), note)


def setting_text(value: Any) -> str:
    """One attack setting as a reader wants it: floats to 4 significant digits, the rest as written."""
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def settings_table(records: Sequence[CellRecord]) -> Table | None:
    """The full settings every attack cell ran with (``Attack.settings``, stored per cell), one row per
    attack, budget and seed, so two cells that differ in any setting never look the same."""
    rows = tuple(
        (r.attack, budget_text(r.budget), str(r.seed),
         ", ".join(f"{name}={setting_text(value)}" for name, value in attack["settings"].items() if name != "seed"))
        for r in in_grid_order(records)
        for attack in r.settings.get("attacks", [])
    )
    return Table("Attack settings", ("attack", "budget", "seed", "settings"), rows) if rows else None


@dataclass(frozen=True)
class TransferMatrix:
    """Success rates of examples crafted on ``sources`` (rows) against ``targets`` (columns)."""

    sources: tuple[str, ...]
    targets: tuple[str, ...]
    rates: tuple[tuple[Summary | None, ...], ...]

    def rate(self, source: str, target: str) -> Summary | None:
        """The success rate of ``source`` -> ``target``; None for a pair this matrix lacks."""
        if source not in self.sources or target not in self.targets:
            return None
        return self.rates[self.sources.index(source)][self.targets.index(target)]


def transfer_pair(key: str) -> tuple[str, str] | None:
    """(source, target) of a ``{source}->{target}/success_rate`` key (a source may be an ensemble
    ``a+b``); None for other keys."""
    if not key.endswith("/success_rate") or "->" not in key:
        return None
    source, target = key.removesuffix("/success_rate").split("->", 1)
    return source, target


def transfer_matrix(records: Sequence[CellRecord]) -> TransferMatrix | None:
    """The transfer matrix of one attack and budget from ``{source}->{target}/success_rate`` metrics."""
    pairs = [pair for r in records for key in r.metrics if (pair := transfer_pair(key))]
    if not pairs:
        return None
    targets = sorted({target for _, target in pairs})
    crafting = {source for source, _ in pairs}
    sources = [t for t in targets if t in crafting] + sorted(crafting.difference(targets))
    rates = tuple(tuple(summarize(records, f"{s}->{t}/success_rate") for t in targets) for s in sources)
    return TransferMatrix(tuple(sources), tuple(targets), rates)


def transfer_table(matrix: TransferMatrix, title: str) -> Table:
    """A transfer matrix as a table: rows crafted from, columns attacked model, white-box on the diagonal."""
    rows = tuple((source, *row) for source, row in zip(matrix.sources, matrix.rates, strict=True))
    return Table(title, ("crafted from \\ attacked", *matrix.targets), rows,
                 "Attack success rate; source = target is the white-box attack.")


def paper_columns(matrix: TransferMatrix) -> list[tuple[str, str]]:
    """(source, target) pairs in the exposure paper's Tables 1-3 order: per source, the other targets,
    then the source itself (white-box last)."""
    return [(source, target) for source in matrix.sources
            for target in sorted(matrix.targets, key=lambda t: (t == source, matrix.targets.index(t)))]


def transfer_matrices(records: Sequence[CellRecord]) -> dict[tuple[str, str], TransferMatrix]:
    """The transfer matrix of every (attack, budget) in grid order."""
    return {
        (attack, budget): matrix
        for attack, budget in unique((r.attack, r.budget) for r in in_grid_order(records))
        if (matrix := transfer_matrix(select(records, attack=attack, budget=budget)))
    }


def transfer_overview(matrices: Mapping[tuple[str, str], TransferMatrix]) -> Table | None:
    """Every transfer attack in one table as the exposure paper lays out Tables 1-3: a row per attack and
    budget, a column per crafted-from -> attacked pair, each source's white-box column last."""
    if not matrices:
        return None
    columns = unique(pair for matrix in matrices.values() for pair in paper_columns(matrix))
    rows = tuple(
        (f"{attack} at {budget_text(budget)}", *(matrix.rate(s, t) for s, t in columns))
        for (attack, budget), matrix in matrices.items()
    )
    return Table("Transfer success rate (papers' layout)", ("attack", *(f"{s} → {t}" for s, t in columns)), rows,
                 "Columns grouped by the model the examples were crafted on; the last of each group is white-box.")


def detection_slot(key: str) -> tuple[str, str] | None:
    """The (row, column) of a detection metric key in the detector table, None for other keys."""
    match key.split("/"):
        case ["detect", "transfer", pair, detector, "auc"]:
            return f"transfer {pair}", DETECTOR_TITLES.get(detector, detector)
        case ["detect", attack, "pairs", split]:
            return attack, PAIR_SPLITS.get(split, f"{split} pairs")
        case ["detect", attack, detector, "auc"]:
            return attack, DETECTOR_TITLES.get(detector, detector)
    return None


def detection_table(records: Sequence[CellRecord], title: str) -> Table | None:
    """Detector AUCs (KD, LID, DFeat, QFeat) per attack and per transfer pair, with the AdvTrain/AdvTest pair
    counts (Ma et al. 2020, Tables 2-5). None when the records hold no detection metrics."""
    keys = {slot: key for key in unique(k for r in records for k in r.metrics) if (slot := detection_slot(key))}
    if not keys:
        return None
    order = [*DETECTOR_TITLES.values(), *PAIR_SPLITS.values()]
    columns = sorted({column for _, column in keys}, key=lambda c: (order.index(c) if c in order else len(order), c))
    rows = tuple(
        (row, *(summarize(records, keys[(row, column)]) if (row, column) in keys else None for column in columns))
        for row in unique(row for row, _ in keys)
    )
    return Table(title, ("attack", *columns), rows, "ROC AUC of telling adversarial from clean inputs.")


def to_markdown(table: Table) -> str:
    """The grid of a table as GitHub Markdown, pipes and line breaks in cells escaped."""
    lines = [list(table.header), ["---"] * len(table.header), *([entry_text(c) for c in row] for row in table.rows)]
    return "\n".join(
        "| " + " | ".join(text.replace("|", "\\|").replace("\n", " ") for text in line) + " |" for line in lines
    )


@dataclass(frozen=True)
class ResultRow:
    """One cell as ``medadv results`` lists it. ``metric`` names the score in ``clean``/``adversarial``:
    the task's main metric (attack cells) or the best detector AUC (detection cells); transfer cells give
    the mean black-box success rate (target not among the sources)."""

    kind: str
    dataset: str
    model: str
    attack: str
    budget: str
    seed: int
    metric: str
    clean: float | None
    adversarial: float | None
    success_rate: float | None
    seconds: float | None


Scores = tuple[str, float | None, float | None, float | None]


def attack_scores(record: CellRecord) -> Scores:
    """The task's main metric, clean and adversarial, and the success rate of an attack cell."""
    metric = TASK_METRICS.get(task_of([record]) or "", ("",))[0]
    metrics = record.metrics
    return metric, metrics.get(f"clean/{metric}"), metrics.get(f"adv/{metric}"), metrics.get("adv/success_rate")


def transfer_scores(record: CellRecord) -> Scores:
    """The mean black-box success rate of a transfer cell (pairs whose target is not among the sources)."""
    pairs = {key: pair for key in record.metrics if (pair := transfer_pair(key))}
    rates = [record.metrics[key] for key, (source, target) in pairs.items() if target not in source.split("+")]
    return "transfer", None, None, statistics.fmean(rates) if rates else None


def detection_scores(record: CellRecord) -> Scores:
    """The best detector AUC of a detection cell (over its own attacks, not transfer pairs)."""
    aucs = [value for key, value in record.metrics.items()
            if key.endswith("/auc") and not key.startswith("detect/transfer/")]
    return "detector AUC (best)", None, max(aucs) if aucs else None, None


KIND_SCORES = {"attack": attack_scores, "transfer": transfer_scores, "detection": detection_scores}


def result_rows(records: Iterable[CellRecord]) -> list[ResultRow]:
    """One row per cell, numbers as stored (for CSV and programs)."""
    return [
        ResultRow(r.kind, r.dataset, r.model, r.attack, r.budget, r.seed,
                  *KIND_SCORES.get(r.kind, lambda _: ("", None, None, None))(r), r.seconds)
        for r in records
    ]


RESULT_HEADER = ("dataset", "model", "attack", "budget", "seed", "metric", "clean -> adv", "success rate", "seconds")


def results_table(records: Iterable[CellRecord]) -> Table:
    """The ``medadv results`` listing as display text: one row per cell, main metric as ``clean -> adv``."""

    def number(value: float | None) -> str:
        return MISSING if value is None else format_number(value)

    rows = tuple(
        (row.dataset, row.model, row.attack, budget_text(row.budget), str(row.seed), row.metric,
         number(row.adversarial) if row.clean is None else f"{number(row.clean)} -> {number(row.adversarial)}",
         number(row.success_rate), number(row.seconds))
        for row in result_rows(records)
    )
    return Table("Results", RESULT_HEADER, rows)


def export_csv(records: Iterable[CellRecord], path: Path, protected: Protected | None = None) -> Path:
    """Write :func:`result_rows` as CSV (full precision, empty where a number is missing); returns the path.
    Written atomically, never onto ``protected`` stores or any SQLite file (:func:`check_output`)."""
    check_output(path, protected)
    with atomic_write(path, newline="", encoding="utf-8") as file:
        writer = csv.writer(file)
        writer.writerow(field.name for field in fields(ResultRow))
        for row in result_rows(records):
            writer.writerow("" if value is None else value for value in astuple(row))
    return path


def export_markdown(records: Iterable[CellRecord], path: Path, protected: Protected | None = None) -> Path:
    """Write :func:`results_table` as a Markdown table; returns the path. Guarded as :func:`export_csv`."""
    check_output(path, protected)
    with atomic_write(path, encoding="utf-8") as file:
        file.write(to_markdown(results_table(records)) + "\n")
    return path
