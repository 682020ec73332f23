"""RetinaNetObjective: the one-stage attack boundary (shapes, torchvision parity, independence, modes) and the
DetectorModule's RetinaNet architecture."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor
from torchvision.models.detection import RetinaNet
from torchvision.ops import box_iou

from datamodules import SyntheticEndoscopyDataModule
from lightning_modules.detector import DetectorModule
from lightning_modules.retinanet_objective import RetinaNetObjective, RetinaNetOutputs
from tests.lightning_modules.objective_state import assert_objective_leaves_module_unchanged
from tests.lightning_modules.trained import quick_trainer

SIZE = 64
CLASSES = 3


def retinanet(**kwargs) -> DetectorModule:
    """An untrained RetinaNet whose classes 1..K score above torchvision's 0.05 threshold (the 0.01 prior of an
    untrained head detects nothing); column 0, the background label, keeps the prior."""
    torch.manual_seed(0)
    arguments = {"backbone": "resnet18", "num_classes": CLASSES, "min_size": SIZE, "max_size": SIZE}
    module = DetectorModule(architecture="retinanet", **(arguments | kwargs)).eval()
    bias = module.model.head.classification_head.cls_logits.bias.data.view(-1, CLASSES + 1)
    bias[:, 1:] = torch.tensor([-1.0, -1.5, -2.0])
    return module


@pytest.fixture(scope="module")
def module() -> DetectorModule:
    return retinanet()


@pytest.fixture()
def images() -> Tensor:
    return torch.rand(3, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(3))


@pytest.fixture()
def targets() -> list[dict[str, Tensor]]:
    return [
        {"boxes": torch.tensor([[4.0, 6.0, 30.0, 40.0], [36.0, 30.0, 60.0, 58.0]]), "labels": torch.tensor([1, 3])},
        {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)},
        {"boxes": torch.tensor([[10.0, 12.0, 50.0, 44.0]]), "labels": torch.tensor([2])},
    ]


def test_outputs_meet_the_contract(module, images, targets):
    objective = module.objective()
    assert isinstance(objective, RetinaNetObjective) and isinstance(module.model, RetinaNet)
    outputs = objective.forward(images)
    anchors = outputs.anchors.shape[1]
    assert isinstance(outputs, RetinaNetOutputs) and sum(outputs.anchors_per_level) == anchors
    assert outputs.class_logits.shape == (3, anchors, CLASSES + 1) and outputs.box_regression.shape == (3, anchors, 4)
    logits = objective.logits(outputs)
    assert logits.shape == (3, CLASSES + 1, anchors) and not logits[:, 0].any()
    assert torch.equal(logits[:, 1:], outputs.class_logits[..., 1:].transpose(1, 2))
    assert objective.loss(outputs, targets).shape == (3,) and objective.divergence(outputs, outputs).shape == (3,)
    assert objective.dense_target(outputs, targets).shape == (3, anchors) and objective.num_classes == CLASSES
    assert len(objective.predict(outputs)) == 3


def test_predictions_equal_torchvision_eval_mode_detections(module, images):
    objective = module.objective()
    expected = module(images)
    assert all(len(found["boxes"]) > 0 for found in expected)
    for predicted, reference in zip(objective.predict(objective.forward(images)), expected, strict=True):
        assert predicted.keys() == reference.keys()
        for key in reference:
            torch.testing.assert_close(predicted[key], reference[key])


def test_predictions_are_in_input_pixels_when_the_network_resizes(images):
    module = retinanet(min_size=96, max_size=96)
    objective = module.objective()
    outputs = objective.forward(images)
    assert outputs.image_sizes == [(96, 96)] * 3 and outputs.original_sizes == [(SIZE, SIZE)] * 3
    for predicted, reference in zip(objective.predict(outputs), module(images), strict=True):
        torch.testing.assert_close(predicted["boxes"], reference["boxes"])
        assert predicted["boxes"].numel() > 0 and predicted["boxes"].max() <= SIZE


def test_loss_is_torchvisions_loss_image_by_image(module, images, targets):
    """torchvision's training loss (given the same head outputs) is the batch mean of the per-image losses,
    and an image's loss alone equals its loss in the batch."""
    objective = module.objective()
    outputs = objective.forward(images)
    losses = objective.loss(outputs, targets)
    head = {"cls_logits": outputs.class_logits, "bbox_regression": outputs.box_regression}
    expected = sum(module.model.compute_loss(targets, head, list(outputs.anchors)).values())
    torch.testing.assert_close(losses.mean(), expected)
    for index in range(3):
        alone = objective.loss(objective.forward(images[index : index + 1]), targets[index : index + 1])
        torch.testing.assert_close(alone, losses[index : index + 1], atol=1e-5, rtol=1e-4)


def test_dense_target_labels_anchors_as_the_loss_does(module, images, targets):
    """IoU >= 0.5 with an object: its label; below 0.4 with every object: 0; in between: -1 (ignored), except
    each object's best anchors, which torchvision's matcher keeps as low-quality matches."""
    objective = module.objective()
    outputs = objective.forward(images)
    dense = objective.dense_target(outputs, targets)
    assert (dense[1] == 0).all()
    for index in (0, 2):
        overlap = box_iou(outputs.anchors[index], targets[index]["boxes"])
        best, which = overlap.max(dim=1)
        label = targets[index]["labels"][which]
        expected = torch.where(best >= 0.5, label, torch.where(best < 0.4, 0, -1))
        low_quality = (overlap == overlap.max(dim=0).values).any(dim=1) & (best < 0.5)
        assert torch.equal(dense[index][~low_quality], expected[~low_quality])
        assert (dense[index][low_quality] > 0).all() and (dense[index] > 0).any()


def test_divergence_of_outputs_against_themselves_is_the_mean_anchor_entropy(module, images):
    objective = module.objective()
    outputs = objective.forward(images)
    logits = objective.logits(outputs)
    entropy = -(logits.softmax(dim=1) * logits.log_softmax(dim=1)).sum(dim=1).mean(dim=1)
    torch.testing.assert_close(objective.divergence(outputs, outputs), entropy)


def test_gradients_of_an_images_loss_reach_only_that_image(module, images, targets):
    objective = module.objective()
    x = images.clone().requires_grad_(True)
    (gradient,) = torch.autograd.grad(objective.loss(objective.forward(x), targets)[0], x)
    assert torch.isfinite(gradient).all() and gradient[0].abs().sum() > 0 and not gradient[1:].any()


def test_objective_leaves_modes_parameters_and_batchnorm_statistics_unchanged(images, targets):
    assert_objective_leaves_module_unchanged(retinanet(), images, targets)


def test_the_module_fits_a_retinanet_with_torchvisions_losses():
    datamodule = SyntheticEndoscopyDataModule(num_samples=16, size=SIZE, seed=0, batch_size=4)
    module = DetectorModule(
        "resnet18", num_classes=datamodule.num_classes, min_size=SIZE, max_size=SIZE, architecture="retinanet"
    )
    before = {name: value.clone() for name, value in module.state_dict().items()}
    quick_trainer(limit_train_batches=2).fit(module, datamodule=datamodule)
    head = "model.head.classification_head.cls_logits.weight"
    assert not torch.equal(module.state_dict()[head], before[head])
    assert isinstance(module.objective(), RetinaNetObjective)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"architecture": "yolo"}, "architecture"),
        ({"architecture": "retinanet", "backbone": "mobilenet_v3"}, "backbone"),
    ],
)
def test_bad_architectures_fail_naming_the_argument(kwargs, match):
    with pytest.raises(ValueError, match=match):
        DetectorModule(**kwargs)
