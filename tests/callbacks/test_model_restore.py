"""Every evaluation callback hands the module under test (and TransferEvaluation its source models) back
after ``trainer.test`` as it found them: submodule modes, parameter gradient flags, parameters."""

from __future__ import annotations

from collections.abc import Callable

import lightning as L
import pytest
import torch
from torch import nn

from attacks.gradient import FGSM
from callbacks.adversarial_detection import AdversarialDetectionEvaluation
from callbacks.attack_eval import AdversarialEvaluation
from callbacks.transfer import TransferEvaluation
from datamodules import SyntheticFundusDataModule
from lightning_modules.classifier import ClassifierModule

EPS = 8 / 255
Snapshot = tuple[dict[str, bool], dict[str, bool], dict[str, torch.Tensor]]


def half_frozen_classifier(seed: int) -> ClassifierModule:
    """An untrained classifier in train mode, except one BatchNorm in eval, with its stem frozen."""
    torch.manual_seed(seed)
    module = ClassifierModule("resnet18", num_classes=5).train()
    module.backbone.bn1.eval()
    module.backbone.conv1.requires_grad_(False)
    module.classifier.bias.requires_grad_(False)
    return module


def snapshot(module: nn.Module) -> Snapshot:
    """Training flags, gradient flags and a copy of the state dict (parameters and buffers)."""
    return (
        {name: submodule.training for name, submodule in module.named_modules()},
        {name: parameter.requires_grad for name, parameter in module.named_parameters()},
        {name: value.clone() for name, value in module.state_dict().items()},
    )


def assert_unchanged(module: nn.Module, before: Snapshot) -> None:
    modes, flags, state = snapshot(module)
    assert modes == before[0]
    assert flags == before[1]
    assert state.keys() == before[2].keys()
    assert all(torch.equal(value, before[2][name]) for name, value in state.items())


CALLBACKS: dict[str, Callable[[dict[str, nn.Module]], L.Callback]] = {
    "attack_eval": lambda _: AdversarialEvaluation({"fgsm": lambda eps: FGSM(eps=eps)}, [EPS], brisque=False),
    "transfer": lambda sources: TransferEvaluation({"fgsm": lambda eps: FGSM(eps=eps)}, sources, [EPS]),
    "adversarial_detection": lambda _: AdversarialDetectionEvaluation(
        {"fgsm": FGSM(eps=EPS)}, detectors=("kd", "dfeat"), max_train_samples=10, successful_only=False
    ),
}


@pytest.mark.parametrize("name", list(CALLBACKS))
def test_trainer_test_leaves_tested_and_source_models_as_they_were(name: str) -> None:
    module = half_frozen_classifier(0)
    sources: dict[str, nn.Module] = {"source": half_frozen_classifier(1)}
    before = {"tested": snapshot(module), "source": snapshot(sources["source"])}
    datamodule = SyntheticFundusDataModule(num_samples=40, size=32, seed=0, batch_size=8)
    trainer = L.Trainer(
        accelerator="cpu", devices=1, logger=False, enable_progress_bar=False, enable_model_summary=False,
        limit_test_batches=1, callbacks=[CALLBACKS[name](sources)],
    )
    trainer.test(module, datamodule=datamodule, verbose=False)
    assert_unchanged(module, before["tested"])
    assert_unchanged(sources["source"], before["source"])
