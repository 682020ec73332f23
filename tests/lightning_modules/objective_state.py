"""The check every detector objective passes: using it leaves the module as it found it."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from lightning_modules.detector import DetectorModule


def assert_objective_leaves_module_unchanged(module: DetectorModule, images: Tensor, targets: list[dict]) -> None:
    """Forward, loss backward, predict and dense targets on a train-mode module (frozen-BatchNorm backbone in
    eval) leave every submodule's mode, every parameter and every BatchNorm statistic as they were."""
    module.train()
    module.model.backbone.eval()
    modes = {name: sub.training for name, sub in module.named_modules()}
    state = {name: value.clone() for name, value in module.state_dict().items()}
    objective = module.objective()
    outputs = objective.forward(images)
    objective.loss(outputs, targets).sum().backward()
    objective.predict(outputs)
    objective.dense_target(outputs, targets)
    assert modes == {name: sub.training for name, sub in module.named_modules()}
    for name, value in module.state_dict().items():
        assert torch.equal(value, state[name]), name
    assert any(isinstance(sub, nn.BatchNorm2d) for sub in module.modules())
