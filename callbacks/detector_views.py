"""What the adversarial-example detectors read from a classifier (Ma et al. 2020, Sec. 5): logits,
penultimate features and hooked layers of a batch, the detection features computed from them (log KD,
deep features), and the collector of each attack's (clean, adversarial) pairs. ``views`` keeps the
autograd graph, so the detector-aware attacks (``callbacks.adaptive_detection``) differentiate through it."""

from __future__ import annotations

import contextlib
from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import lightning.pytorch as pl
import torch
from torch import Tensor, nn

from attacks.base import frozen_model
from callbacks.detector_features import DetectionSamples, MinibatchLID, kernel_density

TrainFeatures = tuple[Tensor, Tensor]  # penultimate features and labels of training images, for KD


@dataclass
class ModelViews:
    """What the detectors read from a model for a batch of images: logits, penultimate features and the
    LID layers (the hooked submodule outputs, then the features, then the logits)."""

    logits: Tensor
    features: Tensor
    layers: list[Tensor]

    def select(self, rows: Tensor) -> ModelViews:
        return ModelViews(self.logits[rows], self.features[rows], [layer[rows] for layer in self.layers])


@contextlib.contextmanager
def captured_outputs(module: nn.Module, names: Sequence[str]) -> Iterator[dict[str, Tensor]]:
    """The latest output of each named submodule of ``module`` while the context is open."""
    outputs: dict[str, Tensor] = {}

    def keep(name: str):
        def hook(_: nn.Module, __: Any, output: Any) -> None:
            outputs[name] = output[0] if isinstance(output, (tuple, list)) else output
        return hook

    handles = [module.get_submodule(name).register_forward_hook(keep(name)) for name in names]
    try:
        yield outputs
    finally:
        for handle in handles:
            handle.remove()


def views(pl_module: pl.LightningModule, images: Tensor, layer_names: Sequence[str] = ()) -> ModelViews:
    """Logits, ``pl_module.features`` and the named layers' outputs of ``images``, as the module runs now."""
    features = pl_module.features(images)
    with captured_outputs(pl_module, layer_names) as outputs:
        logits = pl_module(images)
    layers = [outputs[name].flatten(1) for name in layer_names] + [features, logits]
    return ModelViews(logits, features, layers)


def model_views(pl_module: pl.LightningModule, images: Tensor, layer_names: Sequence[str] = ()) -> ModelViews:
    """``views`` in eval mode without gradients."""
    with frozen_model(pl_module), torch.no_grad():
        return views(pl_module, images, layer_names)


def detection_features(seen: ModelViews, train: TrainFeatures | None, sigma: float) -> dict[str, Tensor]:
    """Deep features, and log KD (Eq. 9) at the predicted class when ``train`` features are given."""
    features = {"deep": seen.features}
    if train is not None:
        predicted = seen.logits.argmax(dim=1)
        features["kd"] = kernel_density(seen.features, *train, predicted, sigma).unsqueeze(1)
    return features


class PairCollector:
    """The kept (clean, adversarial) pairs of one attack on this rank, on the CPU."""

    def __init__(self, lid: MinibatchLID | None) -> None:
        self.keys: list[str] = []
        self.clean: dict[str, list[Tensor]] = defaultdict(list)
        self.adversarial: dict[str, list[Tensor]] = defaultdict(list)
        self.lid = lid

    def add(self, keys: list[str], clean: dict[str, Tensor], adversarial: dict[str, Tensor],
            clean_layers: list[Tensor], adversarial_layers: list[Tensor]) -> None:
        self.keys += keys
        for name in clean:
            self.clean[name].append(clean[name].detach().double().cpu())
            self.adversarial[name].append(adversarial[name].detach().double().cpu())
        if self.lid is not None:
            self.lid.add(clean_layers, adversarial_layers)

    def samples(self) -> DetectionSamples:
        clean = {name: torch.cat(parts).numpy() for name, parts in self.clean.items()}
        adversarial = {name: torch.cat(parts).numpy() for name, parts in self.adversarial.items()}
        if self.lid is not None:
            clean["lid"], adversarial["lid"] = (lids.numpy() for lids in self.lid.finish())
        return DetectionSamples(list(self.keys), clean, adversarial)
