"""DetectionObjective: the Faster R-CNN attack boundary (shapes, torchvision parity, independence, modes)."""

import pytest
import torch
from torchvision.models.detection._utils import BalancedPositiveNegativeSampler
from torchvision.models.detection.roi_heads import fastrcnn_loss
from torchvision.ops import box_iou

from lightning_modules.detection_objective import DetectionOutputs, expected_sampled_loss, pad_proposals
from lightning_modules.detector import DetectorModule
from tests.lightning_modules.objective_state import assert_objective_leaves_module_unchanged

SIZE = 64
PROPOSALS = 20


def detector(**kwargs) -> DetectorModule:
    torch.manual_seed(0)
    arguments = {"num_classes": 3, "min_size": SIZE, "max_size": SIZE, "proposals_per_image": PROPOSALS}
    return DetectorModule(**(arguments | kwargs)).eval()


@pytest.fixture(scope="module")
def module() -> DetectorModule:
    return detector()


@pytest.fixture()
def images() -> torch.Tensor:
    return torch.rand(3, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(3))


@pytest.fixture()
def targets() -> list[dict[str, torch.Tensor]]:
    return [
        {"boxes": torch.tensor([[4.0, 6.0, 30.0, 40.0], [36.0, 30.0, 60.0, 58.0]]), "labels": torch.tensor([1, 3])},
        {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)},
        {"boxes": torch.tensor([[10.0, 12.0, 50.0, 44.0]]), "labels": torch.tensor([2])},
    ]


def test_outputs_stack_a_fixed_number_of_proposals_and_meet_the_contract(module, images, targets):
    objective = module.objective()
    outputs = objective.forward(images)
    assert isinstance(outputs, DetectionOutputs) and objective.model is module.model
    assert outputs.proposals.shape == (3, PROPOSALS, 4) and outputs.valid.shape == (3, PROPOSALS)
    assert objective.logits(outputs).shape == (3, 4, PROPOSALS)
    assert outputs.box_regression.shape == (3, PROPOSALS, 4, 4)
    assert objective.loss(outputs, targets).shape == (3,)
    dense = objective.dense_target(outputs, targets)
    assert dense.shape == (3, PROPOSALS) and dense.min() >= -1 and dense.max() <= 3
    assert (dense[~outputs.valid] == -1).all() and (dense[1][outputs.valid[1]] == 0).all()
    assert objective.divergence(outputs, objective.forward(images.flip(0))).shape == (3,)
    assert len(objective.predict(outputs)) == 3


def test_predictions_equal_torchvision_eval_mode_detections(module, images):
    objective = module.objective()
    expected = module(images)
    for predicted, reference in zip(objective.predict(objective.forward(images)), expected, strict=True):
        assert predicted.keys() == reference.keys()
        for key in reference:
            torch.testing.assert_close(predicted[key], reference[key])


def test_predictions_are_in_input_pixels_when_the_network_resizes():
    module = detector(min_size=96, max_size=96)
    images = torch.rand(2, 3, SIZE, SIZE)
    objective = module.objective()
    outputs = objective.forward(images)
    assert outputs.image_sizes == [(96, 96)] * 2 and outputs.original_sizes == [(SIZE, SIZE)] * 2
    for predicted, reference in zip(objective.predict(outputs), module(images), strict=True):
        torch.testing.assert_close(predicted["boxes"], reference["boxes"])
        assert predicted["boxes"].numel() == 0 or predicted["boxes"].max() <= SIZE


def test_a_samples_loss_alone_equals_its_loss_in_the_batch(module, images, targets):
    objective = module.objective()
    batch_loss = objective.loss(objective.forward(images), targets)
    for index in range(3):
        alone = objective.loss(objective.forward(images[index : index + 1]), targets[index : index + 1])
        torch.testing.assert_close(alone, batch_loss[index : index + 1], atol=1e-5, rtol=1e-4)


def test_loss_equals_torchvisions_train_losses_when_the_samplers_keep_everything(images, targets):
    module = detector(rpn_samples_per_image=10**6, roi_samples_per_image=10**6)
    objective = module.objective()
    outputs = objective.forward(images[:1])
    target = targets[:1]
    net = module.model
    anchors = list(outputs.anchors)
    labels, matched = net.rpn.assign_targets_to_anchors(anchors, target)
    objectness_loss, rpn_box_loss = net.rpn.compute_loss(
        outputs.objectness.reshape(-1, 1),
        outputs.rpn_deltas.reshape(-1, 4),
        labels,
        net.rpn.box_coder.encode(matched, anchors),
    )
    proposals = [outputs.proposals[0][outputs.valid[0]]]
    proposals, _, roi_labels, regression_targets = net.roi_heads.select_training_samples(proposals, target)
    heads = net.roi_heads
    class_logits, box_regression = heads.box_predictor(
        heads.box_head(heads.box_roi_pool(outputs.features, proposals, outputs.image_sizes))
    )
    classification_loss, roi_box_loss = fastrcnn_loss(class_logits, box_regression, roi_labels, regression_targets)
    expected = objectness_loss + rpn_box_loss + classification_loss + roi_box_loss
    torch.testing.assert_close(objective.loss(outputs, target)[0], expected, atol=1e-5, rtol=1e-5)


def test_expected_sampled_loss_is_the_mean_of_torchvisions_sampled_loss():
    sampler = BalancedPositiveNegativeSampler(batch_size_per_image=8, positive_fraction=0.25)
    generator = torch.Generator().manual_seed(0)
    labels = torch.tensor([[1, 2, 3, 1, 0, 0, 0, 0, 0, 0, 0, 0, -1, -1, 2, 0]])
    classification = torch.rand(1, 16, generator=generator)
    regression = torch.rand(1, 16, generator=generator)
    torch.manual_seed(0)
    draws = []
    for _ in range(4000):
        (positive,), (negative,) = sampler(list(labels))
        drawn = positive.bool() | negative.bool()
        draws.append((classification[0] + regression[0] * positive)[drawn].sum() / drawn.sum())
    monte_carlo = torch.stack(draws).mean()
    expected = expected_sampled_loss(classification, regression, labels, sampler)
    assert expected.shape == (1,)
    assert expected.item() == pytest.approx(monte_carlo.item(), abs=0.01)


def test_gradients_of_an_images_loss_and_divergence_reach_only_that_image(module, images, targets):
    objective = module.objective()
    x = images.clone().requires_grad_(True)
    outputs = objective.forward(x)
    reference = objective.forward(images * 0.9)
    for value in (objective.loss(outputs, targets)[0], objective.divergence(outputs, reference)[0]):
        (gradient,) = torch.autograd.grad(value, x, retain_graph=True)
        assert torch.isfinite(gradient).all()
        assert gradient[0].abs().sum() > 0 and not gradient[1:].any()


def test_objective_leaves_modes_parameters_and_batchnorm_statistics_unchanged(images, targets):
    assert_objective_leaves_module_unchanged(detector(), images, targets)


def test_dense_target_labels_valid_proposals_by_iou_with_ground_truth(module, images, targets):
    objective = module.objective()
    outputs = objective.forward(images)
    dense = objective.dense_target(outputs, targets)
    for index in (0, 2):
        overlap = box_iou(outputs.proposals[index], targets[index]["boxes"])
        best, which = overlap.max(dim=1)
        expected = torch.where(best >= 0.5, targets[index]["labels"][which], 0)
        valid = outputs.valid[index]
        assert torch.equal(dense[index][valid], expected[valid])


def test_divergence_of_outputs_against_themselves_is_the_mean_prediction_entropy(module, images):
    objective = module.objective()
    outputs = objective.forward(images)
    divergence = objective.divergence(outputs, outputs)
    for index in range(3):
        logits = outputs.class_logits[index].T[outputs.valid[index]]
        entropy = -(logits.softmax(dim=1) * logits.log_softmax(dim=1)).sum(dim=1).mean()
        torch.testing.assert_close(divergence[index], entropy)


def test_pad_proposals_keeps_the_first_boxes_and_pads_with_invalid_whole_image_boxes():
    boxes = [torch.tensor([[1.0, 2.0, 3.0, 4.0]] * 5), torch.zeros(0, 4)]
    padded, valid = pad_proposals(boxes, 3, [(10, 20), (30, 40)])
    assert padded.shape == (2, 3, 4)
    assert valid.tolist() == [[True, True, True], [False, False, False]]
    assert torch.equal(padded[1], torch.tensor([[0.0, 0.0, 40.0, 30.0]] * 3))


@pytest.mark.parametrize("backbone", ["resnet18", "resnet50"])
def test_other_backbones_meet_the_contract(backbone, targets):
    module = detector(backbone=backbone)
    objective = module.objective()
    outputs = objective.forward(torch.rand(1, 3, SIZE, SIZE))
    assert objective.logits(outputs).shape == (1, 4, PROPOSALS)
    assert torch.isfinite(objective.loss(outputs, targets[:1])).all()


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"backbone": "vgg"}, "backbone"),
        ({"num_classes": 0}, "num_classes"),
        ({"proposals_per_image": 0}, "proposals_per_image"),
        ({"roi_samples_per_image": 0}, "roi_samples_per_image"),
    ],
)
def test_bad_arguments_raise_value_errors_naming_them(kwargs, match):
    with pytest.raises(ValueError, match=match):
        DetectorModule(**kwargs)
