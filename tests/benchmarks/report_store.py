"""A results store as a finished benchmark leaves it, for report tests: a fundus classifier (attack, transfer
and detection cells, two seeds), a lung CT segmenter (attack cells, one seed, BRISQUE off) and one
failed cell. Metrics follow the papers' trends (scores fall and success rises with the budget). Attack cells
at the largest budget carry the analysis arrays (landscape, attribution maps; t-SNE for the classifier) as the
runner stores them."""

from __future__ import annotations

import io
import math
import random
from pathlib import Path

import numpy as np
from PIL import Image

from attacks.budgets import budget_value
from benchmarks.store import CellRecord, ResultsStore

BENCHMARK = "demo"
VERSIONS = {"torch": "2.4.0", "medadvbench": "0.1.0"}
FUNDUS_ATTACKS = {"fgsm": ("2_255", "8_255"), "pgd": ("2_255", "8_255"), "smia": ("2_255", "8_255"),
                  "deepfool": ("min",)}
LUNG_ATTACKS = {"pgd": ("0.01", "0.05"), "smia": ("0.01", "0.05"), "dag": ("0.01", "0.05")}
STRENGTH = {"fgsm": 0.5, "pgd": 1.0, "smia": 1.3, "deepfool": 1.0, "dag": 0.8, "bef": 0.7}
TRANSFER_MODELS = ("resnet18", "resnet50", "mobilenetv3_large_100")


def example_png(seed: int) -> bytes:
    """A 48 x 144 strip (clean | amplified perturbation | adversarial) as the runner stores it: a reddish
    fundus-like disc, sign noise, and the disc with the noise at 8/255."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[-1:1:48j, -1:1:48j]
    clean = np.clip(1.1 - np.hypot(x, y), 0, 1)[..., None] * np.array([0.9, 0.4, 0.2])
    noise = np.sign(rng.standard_normal((48, 48, 3)))
    strip = np.concatenate([clean, 0.5 + 0.5 * noise, np.clip(clean + 8 / 255 * noise, 0, 1)], axis=1)
    buffer = io.BytesIO()
    Image.fromarray((strip * 255).astype(np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def analysis_arrays(position: int, features: bool) -> dict[str, np.ndarray]:
    """A cell's analysis arrays: a landscape steep along the adversarial direction, attribution maps of a blob
    that moves under attack over two 32 x 32 discs, and (``features``) a t-SNE of 8 clean and 8 adversarial."""
    rng = np.random.default_rng(position)
    offsets = np.linspace(-8 / 255, 8 / 255, 5, dtype=np.float32)
    a, b = np.meshgrid(offsets, offsets, indexing="ij")
    losses = 0.6 + 400 * np.maximum(a, 0) ** 2 + 20 * b ** 2 + rng.uniform(0, 0.05, (4, 1, 1))
    y, x = np.mgrid[0:8, 0:8]
    blob = lambda cy, cx: np.exp(-((y - cy) ** 2 + (x - cx) ** 2) / 4).astype(np.float32)  # noqa: E731
    disc = np.clip(1.1 - np.hypot(*np.mgrid[-1:1:32j, -1:1:32j]), 0, 1)
    image = (255 * disc[None] * np.array([0.9, 0.4, 0.2])[:, None, None]).astype(np.uint8)
    arrays = {"landscape/offsets": offsets, "landscape/losses": losses.astype(np.float32),
              "attribution/clean": np.stack([blob(3, 3), blob(4, 4)]),
              "attribution/adversarial": np.stack([blob(6, 1 + position % 5), blob(1, 6)]),
              "attribution/clean_images": np.stack([image, image]),
              "attribution/adversarial_images": np.stack([image, image])}
    if features:
        points = rng.standard_normal((16, 2)).astype(np.float32)
        points[8:] += 4
        arrays |= {"features/embedding": points, "features/adversarial": np.repeat([0.0, 1.0], 8),
                   "features/labels": np.tile(np.arange(4.0), 4)}
    return arrays


def cell(kind: str, dataset: str, model: str, attack: str, budget: str, seed: int, metrics: dict[str, float],
         task: str, status: str = "done", error: str = "") -> CellRecord:
    settings = {"budget": budget_value(budget), "task": task}
    if kind == "attack":  # as the runner stores it: the built attack's full settings
        attack_settings = {"eps": budget_value(budget), "steps": 10, "norm": "linf", "seed": seed}
        settings["attacks"] = [{"label": attack, "name": attack, "budget": budget_value(budget),
                                "settings": attack_settings}]
    return CellRecord(
        key=f"{BENCHMARK}/{kind}/{dataset}/{model}/{attack}/{budget}/{seed}", benchmark=BENCHMARK,
        config_hash="0" * 16, kind=kind, dataset=dataset, model=model, attack=attack, budget=budget, seed=seed,
        status=status, metrics=metrics, settings=settings,
        versions=VERSIONS, seconds=12.5, error=error, started_at=1.0, finished_at=2.0,
    )


def fall(clean: float, attack: str, budget: str, noise: float) -> float:
    """A score after attack: lower for stronger attacks and larger budgets (``min`` counts as 8/255)."""
    levels = (budget_value(budget) or 8 / 255) * 255
    return clean * math.exp(-STRENGTH[attack] * levels / 6) + noise


def quality(attack: str, budget: str, rng: random.Random, brisque: bool) -> dict[str, float]:
    levels = (budget_value(budget) or 4 / 255) * 255
    metrics = {
        "adv/linf": levels / 255, "adv/l2": levels / 255 * 20, "adv/var": 1e-5 * levels ** 2 / STRENGTH[attack],
        "adv/cos_positive": min(1.0, 0.5 + 0.3 * STRENGTH[attack] + rng.uniform(0, 0.05)),
        "adv/cos_mean": 0.2 * STRENGTH[attack], "adv/seconds_per_image": 0.004 * STRENGTH[attack],
        "adv/queries": 10.0, "adv/ssim": 1 - 0.03 * levels - rng.uniform(0, 0.02), "adv/psnr": 48 - 2 * levels,
    }
    if brisque:
        metrics |= {"adv/brisque": 20 + 3 * levels / STRENGTH[attack], "clean/brisque": 18.0 + rng.uniform(0, 1)}
    # the failure checks' evidence: healthy, but for DeepFool, which leaves 20% of the samples unbroken
    metrics |= {"check/vanishing_gradients": 0.0, "check/random_model": 0.0, "check/loss_not_increasing": 0.05}
    metrics |= {"adv/cam_rank_corr": 0.9 - 0.1 * levels * STRENGTH[attack], "adv/cam_iou": 0.8 - 0.05 * levels,
                "clean/sharpness": 2.5, "clean/sharpness_random": 0.1}
    if budget == "min":
        metrics["check/unbounded_not_broken"] = 0.2
    return metrics


def fundus_cells(seed: int) -> list[CellRecord]:
    rng = random.Random(seed)
    clean = {"accuracy": 0.82 + 0.02 * seed, "auc": 0.9, "fpr": 0.1}
    cells = []
    for attack, budgets in FUNDUS_ATTACKS.items():
        for budget in budgets:
            accuracy = fall(clean["accuracy"], attack, budget, rng.uniform(0, 0.02))
            adv = {"accuracy": accuracy, "auc": 0.5 + fall(clean["auc"] - 0.5, attack, budget, 0.0),
                   "fpr": 0.1 + 0.5 * (1 - accuracy), "success_rate": 1 - accuracy / clean["accuracy"]}
            adv |= {f"{m}_drop": clean[m] - adv[m] for m in clean}
            metrics = {f"clean/{m}": v for m, v in clean.items()} | {f"adv/{m}": v for m, v in adv.items()}
            metrics |= quality(attack, budget, rng, brisque=True)
            cells.append(cell("attack", "synthetic_fundus", "resnet18", attack, budget, seed, metrics,
                              "classification"))
    for attack, budget in (("pgd", "8_255"), ("bef", "0.01")):
        rates = {f"{s}->{t}/success_rate": 1.0 if s == t else min(1.0, 0.2 * STRENGTH[attack] + rng.uniform(0, 0.3))
                 for s in TRANSFER_MODELS for t in TRANSFER_MODELS}
        cells.append(cell("transfer", "synthetic_fundus", "transfer", attack, budget, seed, rates, "classification"))
    detection = {f"detect/{a}/{d}/auc": 0.6 + 0.1 * i + rng.uniform(0, 0.05)
                 for a in ("fgsm", "pgd") for i, d in enumerate(("kd", "lid", "dfeat", "qfeat"))}
    detection |= {f"detect/{a}/pairs/{split}": n for a in ("fgsm", "pgd") for split, n in (("advtrain", 120.0),
                                                                                          ("advtest", 60.0))}
    detection |= {f"detect/transfer/fgsm->pgd/{d}/auc": 0.55 + rng.uniform(0, 0.1) for d in ("kd", "lid")}
    cells.append(cell("detection", "synthetic_fundus", "resnet18", "detection", "8_255", seed, detection,
                      "classification"))
    return cells


def lung_cells() -> list[CellRecord]:
    rng = random.Random(7)
    clean = {"jaccard": 0.91, "dice": 0.95, "pixel_accuracy": 0.97}
    cells = []
    for attack, budgets in LUNG_ATTACKS.items():
        for budget in budgets:
            adv = {m: fall(v, attack, budget, rng.uniform(0, 0.02)) for m, v in clean.items()}
            metrics = {f"clean/{m}": v for m, v in clean.items()} | {f"adv/{m}": v for m, v in adv.items()}
            metrics |= quality(attack, budget, rng, brisque=False)
            cells.append(cell("attack", "synthetic_lung_ct", "unet_resnet18", attack, budget, 0, metrics,
                              "segmentation"))
    return cells


def build_store(path: Path) -> ResultsStore:
    """The demo benchmark in a new store at ``path``: every attack cell has one example image."""
    store = ResultsStore(path)
    for position, record in enumerate([*fundus_cells(0), *fundus_cells(1), *lung_cells()]):
        store.start(record)
        attacked = record.kind == "attack"
        examples = [(f"sample {position}: label 2, clean prediction 2, adversarial prediction 0",
                     example_png(position))] if attacked else []
        analysed = attacked and record.budget in ("8_255", "0.05", "min")  # the largest budgets: fewer panels to draw
        arrays = analysis_arrays(position, record.settings["task"] == "classification") if analysed else {}
        store.finish(record, examples, arrays=arrays)
    error = "Traceback (most recent call last):\n  ...\nRuntimeError: <out of memory> & more"
    failed = cell("attack", "synthetic_lung_ct", "unet_resnet18", "cw", "min", 0, {}, "segmentation", "failed", error)
    store.start(failed)
    store.finish(failed)
    return store
