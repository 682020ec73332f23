"""SegmenterModule: smp U-Net on [0, 1] images of any size, Dice + cross-entropy, binary metrics."""

import pytest
import torch
import torch.nn.functional as F

from lightning_modules.objectives import SegmentationObjective
from lightning_modules.segmenter import SegmenterModule, pad_to_multiple


@pytest.mark.parametrize(("height", "width"), [(64, 64), (72, 50), (28, 28)])
def test_logits_keep_the_input_size(height, width):
    module = SegmenterModule().eval()
    assert module(torch.rand(2, 1, height, width)).shape == (2, 1, height, width)


def test_padding_reaches_the_next_multiple_with_zeros_at_bottom_right():
    images = torch.rand(1, 2, 33, 64)
    padded = pad_to_multiple(images, 32)
    assert padded.shape == (1, 2, 64, 64)
    assert torch.equal(padded[..., :33, :], images) and not padded[..., 33:, :].any()


def test_normalisation_inside_forward_equals_feeding_normalised_images():
    module = SegmenterModule(mean=(0.3,), std=(0.2,)).eval()
    plain = SegmenterModule(mean=(0.0,), std=(1.0,)).eval()
    plain.unet.load_state_dict(module.unet.state_dict())
    images = torch.rand(2, 1, 32, 32)
    torch.testing.assert_close(module(images), plain((images - 0.3) / 0.2))


def test_step_loss_is_cross_entropy_plus_dice_and_metrics_match_their_definitions():
    module = SegmenterModule().eval()
    images = torch.rand(3, 1, 32, 32)
    masks = (torch.rand(3, 32, 32) > 0.6).long()
    with pytest.warns(UserWarning, match="trainer"):  # self.log outside a Trainer only warns
        loss = module.step({"image": images, "target": masks, "id": ["a", "b", "c"]}, "test")
    logits = module(images).detach()
    probability = logits.sigmoid()[:, 0]
    soft_dice = 1 - 2 * (probability * masks).sum() / (probability.sum() + masks.sum()).clamp(min=1e-7)
    expected = F.binary_cross_entropy_with_logits(logits[:, 0], masks.float()) + soft_dice
    torch.testing.assert_close(loss.detach(), expected, atol=1e-5, rtol=1e-5)
    predicted = logits[:, 0] > 0
    truth = masks.bool()
    scores = module.stage_metrics["test_metrics"].compute()
    intersection, union = (predicted & truth).sum(), (predicted | truth).sum()
    assert scores["test_jaccard"].item() == pytest.approx((intersection / union).item(), abs=1e-6)
    assert scores["test_dice"].item() == pytest.approx(
        (2 * intersection / (predicted.sum() + truth.sum())).item(), abs=1e-6
    )
    assert scores["test_pixel_acc"].item() == pytest.approx((predicted == truth).float().mean().item(), abs=1e-6)


def test_multiclass_segmenter_uses_softmax_logits_and_macro_metrics():
    module = SegmenterModule(in_channels=3, classes=3).eval()
    images, masks = torch.rand(2, 3, 32, 32), torch.randint(0, 3, (2, 32, 32))
    with pytest.warns(UserWarning, match="trainer"):
        module.step({"image": images, "target": masks, "id": ["a", "b"]}, "val")
    assert module(images).shape == (2, 3, 32, 32)
    assert set(module.stage_metrics["val_metrics"].compute()) == {"val_jaccard", "val_dice", "val_pixel_acc"}


def test_objective_is_per_sample_and_gradients_reach_the_input():
    module = SegmenterModule().eval()
    objective = module.objective()
    assert isinstance(objective, SegmentationObjective) and objective.model is module
    images = torch.rand(3, 1, 32, 32, requires_grad=True)
    masks = (torch.rand(3, 32, 32) > 0.5).long()
    loss = objective.loss(objective.forward(images), masks)
    assert loss.shape == (3,)
    torch.testing.assert_close(loss[1:2], objective.loss(objective.forward(images[1:2]), masks[1:2]))
    (gradient,) = torch.autograd.grad(loss[0], images)
    assert gradient[0].abs().sum() > 0 and not gradient[1:].any()


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"encoder_name": "no_such_encoder"}, "encoder_name='no_such_encoder'"),
        ({"classes": 0}, "classes"),
        ({"encoder_depth": 6}, "encoder_depth"),
        ({"in_channels": 2, "mean": (0.1, 0.2, 0.3)}, "mean"),
    ],
)
def test_bad_arguments_raise_value_errors_naming_them(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SegmenterModule(**kwargs)
