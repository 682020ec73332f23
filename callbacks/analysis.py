"""Why a model breaks, on a bounded sample of the first test batch: the loss landscape and its sharpness,
the attribution shift (Grad-CAM or saliency, clean against adversarial) and a t-SNE of penultimate
features, per attack. ``AdversarialEvaluation(analysis=AdversarialAnalysis())`` feeds it each attack's
adversarial images on rank 0; it returns metrics for the evaluation's results and arrays for the report."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from attacks.base import frozen_model
from attacks.budgets import parse_budget
from callbacks.analysis_attribution import attribution_maps, cam_layer, rank_correlation, top_iou
from callbacks.analysis_features import neighbour_agreement, tsne_embedding
from callbacks.analysis_landscape import Landscape, loss_landscape
from callbacks.examples import heat_overlay, to_uint8

ATTRIBUTION_TASKS = ("classification", "segmentation")  # a detector's score over proposals has no one map
LANDSCAPE_CAP = {"detection": 2}  # a detector's forward pass costs tens of a classifier's: fewer landscape samples
SHOWN = 4  # samples whose images and maps are kept for the figures
TOP_SHARE = 0.2  # the attribution region compared by IoU: each map's top 20% of positions


def attribution_overlays(arrays: Mapping[str, Tensor]) -> list[tuple[Tensor, Tensor]]:
    """(clean, adversarial) attribution maps over their images, (3, H, W) uint8 each, for every sample one
    attack's arrays show (none when the task has no attribution view)."""
    if "attribution/clean" not in arrays:
        return []
    return [(heat_overlay(clean, clean_map), heat_overlay(adv, adv_map)) for clean, clean_map, adv, adv_map in zip(
        arrays["attribution/clean_images"], arrays["attribution/clean"], arrays["attribution/adversarial_images"],
        arrays["attribution/adversarial"], strict=True)]


def analysis_from_config(value: Any, seed: int = 0) -> AdversarialAnalysis:
    """The analysis an ``evaluation.analysis`` config block asks for: a mapping of :class:`AdversarialAnalysis`
    arguments (``radius`` may be written ``8/255``; ``seed`` defaults to ``seed``); ValueError naming the
    offending key or value."""
    if not isinstance(value, Mapping):
        raise ValueError(f"must be a mapping such as {{samples: 8}}, got {value!r}")
    unknown = set(value) - {"samples", "radius", "points", "features", "seed"}
    if unknown:
        raise ValueError(f"unknown keys {sorted(unknown)}; known: features, points, radius, samples, seed")
    settings = {"seed": seed} | dict(value)
    if "radius" in settings:
        settings["radius"] = parse_budget(settings["radius"], "evaluation.analysis.radius")
    return AdversarialAnalysis(**settings)


def check_analysis(value: Any) -> dict[str, Any]:
    """The ``evaluation.analysis`` block as written, once :func:`analysis_from_config` accepts it."""
    analysis_from_config(value)
    return dict(value)


@dataclass
class CleanViews:
    """What the analysis computes once per batch, before any attack: the landscape, the Grad-CAM layer, the
    clean maps and features."""

    landscape: Landscape
    layer: nn.Module | None = None
    maps: Tensor | None = None
    features: Tensor | None = None
    labels: Tensor | None = None


@dataclass
class AttackViews:
    """One attack's arrays for the report (``arrays()`` names them) and its metrics."""

    arrays: dict[str, Tensor] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)


class AdversarialAnalysis:
    """Analysis views of one evaluation, computed on the first ``samples`` images of the first test batch
    (t-SNE on the first ``features``): landscape on a ``points`` x ``points`` grid of Linf offsets up to
    ``radius``; Grad-CAM or saliency maps for classifiers and segmenters; t-SNE for modules with ``features``.
    Leaves the model as it found it (``frozen_model``)."""

    def __init__(self, samples: int = 8, radius: float = 8 / 255, points: int = 11, features: int = 64,
                 seed: int = 0) -> None:
        for name, value, least in (("samples", samples, 1), ("points", points, 3), ("features", features, 4)):
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                raise ValueError(f"{name} must be an integer >= {least}, got {value!r}")
        if points % 2 == 0:
            raise ValueError(f"points must be odd (0 in the middle of the grid), got {points}")
        if isinstance(radius, bool) or not isinstance(radius, int | float) or not 0 < radius <= 1:
            raise ValueError(f"radius must be in (0, 1], got {radius!r}")
        self.samples, self.radius, self.points, self.features, self.seed = samples, radius, points, features, seed
        self.clean: CleanViews | None = None
        self.reused: CleanViews | None = None
        self.views: dict[str, AttackViews] = {}

    def observe(self, key: str, module: nn.Module, images: Tensor, target: Any, adv_images: Tensor) -> None:
        """Analyse the attack at ``key`` from one batch's clean and adversarial images."""
        objective = module.objective()
        with frozen_model(objective.model):
            if self.clean is None:
                self.clean = self.clean_views(module, objective, images, target)
            self.views[key] = self.attack_views(module, objective, images, target, adv_images)

    def clean_views(self, module: nn.Module, objective: Any, images: Tensor, target: Any) -> CleanViews:
        """The landscape, and the clean attribution maps and features where the task has them."""
        count = min(self.samples, len(images), LANDSCAPE_CAP.get(getattr(module, "task", ""), self.samples))
        first, first_target = images[:count], target[:count]  # a tensor, or a list of detection dicts
        views = CleanViews(loss_landscape(objective, first, first_target, self.radius, self.points, self.seed))
        if getattr(module, "task", None) in ATTRIBUTION_TASKS:
            views.layer = cam_layer(objective, first)
            views.maps = attribution_maps(objective, first, views.layer)
        if hasattr(module, "features") and len(images) >= 2:
            with torch.no_grad():
                views.features = module.features(images[:self.features]).float().cpu()
            views.labels = target[:self.features].float().cpu()
        return views

    def attack_views(self, module: nn.Module, objective: Any, images: Tensor, target: Any, adv: Tensor) -> AttackViews:
        """The attribution shift and t-SNE of one attack's adversarial images, with the landscape's arrays."""
        clean = self.clean
        views = AttackViews({"landscape/offsets": clean.landscape.offsets, "landscape/losses": clean.landscape.losses})
        if clean.maps is not None:
            adv_maps = attribution_maps(objective, adv[:len(clean.maps)], clean.layer)
            views.metrics |= {"cam_rank_corr": float(rank_correlation(clean.maps, adv_maps).nanmean()),
                              "cam_iou": float(top_iou(clean.maps, adv_maps, TOP_SHARE).mean())}
            shown = min(SHOWN, len(adv_maps))
            views.arrays |= {
                "attribution/clean": clean.maps[:shown], "attribution/adversarial": adv_maps[:shown],
                "attribution/clean_images": torch.stack([to_uint8(x) for x in images[:shown]]),
                "attribution/adversarial_images": torch.stack([to_uint8(x) for x in adv[:shown]]),
            }
        if clean.features is not None:
            with torch.no_grad():
                adv_features = module.features(adv[:len(clean.features)]).float().cpu()
            embedding = tsne_embedding(torch.cat([clean.features, adv_features]), self.seed)
            adversarial = torch.cat([torch.zeros(len(adv_features)), torch.ones(len(adv_features))])
            partners = torch.arange(len(embedding)).roll(len(adv_features))  # clean i <-> adversarial i
            views.metrics["tsne_separation"] = neighbour_agreement(embedding, adversarial, partners)
            views.arrays |= {"features/embedding": embedding, "features/adversarial": adversarial,
                             "features/labels": torch.cat([clean.labels, clean.labels])}
        return views

    def metrics(self) -> dict[str, float]:
        """``clean/sharpness`` and ``clean/sharpness_random`` (:meth:`Landscape.sharpness` along g and r), and
        per attack ``adv/{key}/cam_rank_corr``, ``adv/{key}/cam_iou`` and ``adv/{key}/tsne_separation``."""
        if self.clean is None:
            return {}
        found = {"clean/sharpness": self.clean.landscape.sharpness("adversarial"),
                 "clean/sharpness_random": self.clean.landscape.sharpness("random")}
        for key, views in self.views.items():
            found |= {f"adv/{key}/{name}": value for name, value in views.metrics.items()}
        return found

    def arrays(self, key: str) -> dict[str, Tensor]:
        """The arrays of the attack at ``key`` (empty when it was not observed, e.g. on ranks other than 0)."""
        views = self.views.get(key)
        return dict(views.arrays) if views else {}

    def reuse(self, clean: CleanViews | None) -> None:
        """Start each evaluation from ``clean``, the views of an earlier evaluation of the same model on the
        same first batch (they depend on the model alone), instead of computing them again."""
        self.reused = clean

    def reset(self) -> None:
        """Forget the batch analysed (a new ``trainer.test`` starts afresh, from the reused clean views)."""
        self.clean, self.views = self.reused, {}
