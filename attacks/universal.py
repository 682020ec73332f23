"""Universal adversarial perturbations: one image-agnostic perturbation v fitted on a data set.

Moosavi-Dezfooli et al. 2017 (Algorithm 1) with the gradient-step inner attack of Hirano & Takemoto 2020
(non-targeted and targeted UAPs for medical imaging), batched.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch
from torch import Tensor

from attacks.base import (
    Attack,
    AttackResult,
    Objective,
    SampleRandom,
    TraceRecorder,
    check_budget,
    check_fraction,
    check_positive,
    check_steps,
    fooled_fraction,
    frozen_model,
    input_gradient,
)
from attacks.norms import L2, TINY, norm_by_name


def random_perturbation_like(perturbation: Tensor, norm: str, generator: torch.Generator) -> Tensor:
    """Random control of Hirano & Takemoto 2020: uniform elements in [-1, 1], rescaled to the same Lp norm."""
    size = norm_by_name(norm).size
    noise = torch.rand(perturbation.shape, generator=generator, device=perturbation.device) * 2 - 1
    return noise * (size(perturbation[None]) / size(noise[None]).clamp_min(TINY))


def batch_images(batch: Any) -> Tensor:
    """The images of a dict batch ``{"image", "target", ...}`` or of an (images, target) sequence."""
    if isinstance(batch, dict):
        return batch["image"]
    if isinstance(batch, (tuple, list)) and len(batch) >= 1:
        return batch[0]
    kind = type(batch).__name__
    raise ValueError(f"batch must be a dict with 'image' or an (images, target) tuple, not {kind}")


def fooled_by(predictions: Tensor, reference: Tensor | None, target_class: int | None) -> Tensor:
    """Per-sample fraction of positions fooled: prediction changed from ``reference`` (non-targeted) or
    equal to ``target_class`` (targeted). 0 or 1 for classification, a pixel average for dense tasks."""
    if not isinstance(predictions, Tensor):
        raise ValueError("universal perturbations need tensor predictions (classification or segmentation)")
    return fooled_fraction(predictions != reference if target_class is None else predictions == target_class)


@torch.no_grad()
def _predict(objective: Objective, images: Tensor) -> Tensor:
    return objective.predict(objective.forward(images))


def fooling_rate(objective: Objective, images: Tensor, adv: Tensor) -> float:
    """Fraction of samples whose prediction changed from clean (per-pixel fraction for dense tasks)."""
    with frozen_model(objective.model):
        reference = _predict(objective, images)
        return fooled_by(_predict(objective, adv), reference, None).mean().item()


def targeted_success_rate(objective: Objective, adv: Tensor, target_class: int) -> float:
    """Fraction of samples predicted as ``target_class`` (per-pixel fraction for dense tasks)."""
    with frozen_model(objective.model):
        return fooled_by(_predict(objective, adv), None, target_class).mean().item()


def model_device(objective: Objective) -> torch.device:
    """The device of the objective's model (CPU for a model without tensors)."""
    tensors = [*objective.model.parameters(), *objective.model.buffers()]
    return tensors[0].device if tensors else torch.device("cpu")


class UniversalPerturbation(Attack):
    """Universal adversarial perturbation (Moosavi-Dezfooli et al. 2017, Alg. 1; Hirano & Takemoto 2020).

    ``fit`` passes over a loader; the samples of each batch that v does not fool yet move v by one step
    along the sum of their unit-L2 loss gradients (its sign for Linf), then v is projected onto the
    eps-ball P_{p,xi}, until the fooling rate on the fitted data reaches ``target_fooling_rate``
    (1 - delta) or after ``max_epochs``. Fooling is measured against the clean prediction (labels are not
    needed) or, with ``target_class``, as reaching that class. Calling the attack adds v to every image.
    The fit reads the first ``max_fit_images`` images of the loader (None: all), as the paper fits on a
    bounded sample (10,000 ImageNet images): on a large training split the fit time stays bounded.
    ``fit_summary`` records how the fit ended (epochs, fooling rate, images, seconds, whether the rate was
    reached); ``fit(..., progress=print)`` reports each epoch.
    """

    name = "uap"

    def __init__(
        self,
        eps: float,
        norm: str = "linf",
        step: float | None = None,
        max_epochs: int = 10,
        target_fooling_rate: float = 0.8,
        target_class: int | None = None,
        max_fit_images: int | None = 2000,
        seed: int = 0,
    ) -> None:
        super().__init__(seed)
        check_budget("eps", eps, norm, allow_zero=step is not None)  # the default step eps / 10 must be > 0
        if max_fit_images is not None:
            check_steps("max_fit_images", max_fit_images)
        self.threat = norm_by_name(norm)
        step = eps / 10 if step is None else step
        check_positive("step", step, allow_zero=False)
        check_steps("max_epochs", max_epochs)
        check_fraction("target_fooling_rate", target_fooling_rate)
        if target_class is not None:
            check_steps("target_class", target_class, minimum=0)
        self.eps = eps
        self.norm = norm
        self.step = step
        self.max_epochs = max_epochs
        self.target_fooling_rate = target_fooling_rate
        self.target_class = target_class
        self.max_fit_images = max_fit_images
        self.perturbation: Tensor | None = None
        self.fit_history: list[float] = []
        self.fit_summary: dict[str, float] = {}

    def fit(
        self, objective: Objective, loader: Iterable[Any], progress: Callable[[str], None] | None = None
    ) -> Tensor:
        """Fit v (C, H, W) on ``loader``; stores it in ``self.perturbation``, the per-epoch rates in
        ``self.fit_history`` and the outcome in ``self.fit_summary``; ``progress`` gets one line per epoch."""
        device = model_device(objective)
        perturbation: Tensor | None = None
        self.fit_history = []
        start = time.perf_counter()
        with frozen_model(objective.model):
            for epoch in range(1, self.max_epochs + 1):
                count = 0
                for images in self._fit_images(loader, perturbation, device):
                    if perturbation is None:
                        perturbation = torch.zeros_like(images[0])
                    perturbation = self._update(objective, images, perturbation)
                    count += len(images)
                if perturbation is None:
                    raise ValueError("loader yielded no batches to fit the universal perturbation on")
                self.fit_history.append(self._fooling_rate_on(objective, loader, perturbation, device))
                reached = self.fit_history[-1] >= self.target_fooling_rate
                self.fit_summary = {"fit_epochs": epoch, "fit_fooling_rate": self.fit_history[-1],
                                    "fit_images": count, "fit_seconds": time.perf_counter() - start,
                                    "fit_rate_reached": float(reached)}
                if progress is not None:
                    progress(f"uap fit epoch {epoch}/{self.max_epochs}: fooling rate {self.fit_history[-1]:.3f} "
                             f"(stop at {self.target_fooling_rate:.3f}) on {count} images, "
                             f"{self.fit_summary['fit_seconds']:.1f} s")
                if reached:
                    break
        self.perturbation = perturbation.detach()
        return self.perturbation

    def _fit_images(
        self, loader: Iterable[Any], perturbation: Tensor | None, device: torch.device
    ) -> Iterator[Tensor]:
        """The loader's image batches on ``device``, up to ``max_fit_images`` images in all, all of the shape of
        ``perturbation`` (or of the first batch)."""
        left = self.max_fit_images
        shape = None if perturbation is None else perturbation.shape
        for batch in loader:
            images = batch_images(batch).to(device)
            shape = shape or images.shape[1:]
            if images.shape[1:] != shape:
                raise ValueError(f"loader images have shape {tuple(images.shape[1:])}, expected {tuple(shape)}")
            if left is not None:
                images, left = images[:left], left - len(images[:left])
            if len(images):
                yield images
            if left == 0:
                return

    def _reference(self, objective: Objective, images: Tensor) -> Tensor | None:
        return _predict(objective, images) if self.target_class is None else None

    def _update(self, objective: Objective, images: Tensor, perturbation: Tensor) -> Tensor:
        """One step on v from the samples of ``images`` that v does not fool yet, then the projection."""
        reference = self._reference(objective, images)
        adv = (images + perturbation).clamp(0, 1)
        predictions = _predict(objective, adv)
        active = fooled_by(predictions, reference, self.target_class) < 0.5
        if not active.any():
            return perturbation
        if self.target_class is None:
            labels, sign = reference[active], 1.0
        else:
            labels, sign = torch.full_like(predictions[active], self.target_class), -1.0
        grad, _ = input_gradient(objective, adv[active], labels, sign=sign)
        direction = self.threat.normalise_step(L2().normalise_step(grad).sum(dim=0, keepdim=True))
        return self.threat.project(perturbation[None] + self.step * direction, self.eps)[0]

    def _fooling_rate_on(
        self, objective: Objective, loader: Iterable[Any], perturbation: Tensor, device: torch.device
    ) -> float:
        fooled, count = 0.0, 0
        for images in self._fit_images(loader, perturbation, device):
            adv = (images + perturbation).clamp(0, 1)
            reference = self._reference(objective, images)
            hit = fooled_by(_predict(objective, adv), reference, self.target_class)
            fooled, count = fooled + hit.sum().item(), count + len(hit)
        return fooled / count

    def run(
        self, objective: Objective, images: Tensor, target: Any, random: SampleRandom
    ) -> AttackResult:
        if self.perturbation is None:
            raise ValueError("UniversalPerturbation is not fitted: call fit(objective, loader) or load(path)")
        if images.shape[1:] != self.perturbation.shape:
            raise ValueError(
                f"images have shape {tuple(images.shape[1:])}, "
                f"the universal perturbation {tuple(self.perturbation.shape)}"
            )
        adv = (images + self.perturbation.to(images.device)).clamp(0, 1)
        recorder = TraceRecorder(images)
        recorder.step(adv - images)
        extras = {}
        if self.target_class is not None:
            extras["goal"] = torch.full((len(images),), self.target_class, device=images.device)
        return AttackResult(adv, recorder.finish(adv - images), extras)

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the perturbation and its configuration with torch.save."""
        if self.perturbation is None:
            raise ValueError("UniversalPerturbation is not fitted: nothing to save")
        torch.save({"perturbation": self.perturbation.cpu(), "config": self.settings}, path)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> UniversalPerturbation:
        """Rebuild a fitted attack from ``save``'s file (read with weights_only=True)."""
        if not os.path.isfile(path):
            raise FileNotFoundError(f"universal perturbation file not found: {path}")
        state = torch.load(path, weights_only=True)
        attack = cls(**state["config"])
        attack.perturbation = state["perturbation"]
        return attack
