"""The analysis views: the landscape starts at the model's loss and rises along the adversarial direction,
Grad-CAM and saliency find the one region a model looks at, the shift measures read identical and opposite
maps right, t-SNE separates separable features, and inside ``trainer.test`` the analysis adds its metrics
and arrays and leaves the model as it was."""

from __future__ import annotations

import math

import lightning as L
import pytest
import torch
from torch import nn

from attacks.gradient import FGSM
from callbacks.analysis import AdversarialAnalysis, attribution_overlays, check_analysis
from callbacks.analysis_attribution import attribution_maps, cam_layer, rank_correlation, top_iou
from callbacks.analysis_features import neighbour_agreement, tsne_embedding
from callbacks.analysis_landscape import gradient_sign, loss_landscape
from callbacks.attack_eval import AdversarialEvaluation
from datamodules import SyntheticFundusDataModule
from lightning_modules.objectives import ClassificationObjective
from tests.callbacks.test_model_restore import assert_unchanged, half_frozen_classifier, snapshot

SIZE = 16


def region_mask() -> torch.Tensor:
    """The top-left quarter of a SIZE x SIZE image."""
    mask = torch.zeros(SIZE, SIZE)
    mask[: SIZE // 2, : SIZE // 2] = 1
    return mask


class LooksAtOneRegion(nn.Module):
    """A CNN whose second convolution sees only the top-left quarter: conv, ReLU, mask, conv, ReLU, pool, linear."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.first = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.second = nn.Conv2d(8, 8, 3, padding=1, bias=False)
        self.head = nn.Linear(8, 3)
        self.register_buffer("mask", region_mask())

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        hidden = torch.relu(self.first(images)) * self.mask
        return self.head(torch.relu(self.second(hidden)).mean(dim=(2, 3)))


def linear_objective() -> ClassificationObjective:
    torch.manual_seed(0)
    return ClassificationObjective(nn.Sequential(nn.Flatten(), nn.Linear(3 * SIZE * SIZE, 3)).eval())


def test_landscape_starts_at_the_models_loss_and_rises_along_the_adversarial_direction():
    objective = linear_objective()
    images, target = torch.rand(6, 3, SIZE, SIZE), torch.tensor([0, 1, 2, 0, 1, 2])
    landscape = loss_landscape(objective, images, target, radius=8 / 255, points=7)
    assert landscape.losses.shape == (6, 7, 7) and landscape.offsets[3] == 0
    assert torch.allclose(landscape.losses[:, 3, 3], objective.loss(objective.forward(images), target), atol=1e-6)
    g = gradient_sign(objective, images, target)
    r = torch.randint(0, 2, images.shape, generator=torch.Generator().manual_seed(0)) * 2 - 1
    for row, column in ((0, 6), (5, 1), (2, 3)):  # each grid point is the loss at x + a g + b r, a by row, b by column
        a, b = landscape.offsets[row], landscape.offsets[column]
        direct = objective.loss(objective.forward((images + a * g + b * r).clamp(0, 1)), target)
        assert torch.allclose(landscape.losses[:, row, column], direct, atol=1e-5)
    along = landscape.along("adversarial")
    assert (along[:, -1] > along[:, 3]).all() and (along[:, 0] < along[:, 3]).all()
    assert landscape.sharpness("adversarial") > 5 * abs(landscape.sharpness("random")) > 0
    with pytest.raises(ValueError, match="odd"):
        loss_landscape(objective, images, target, radius=8 / 255, points=4)


def test_grad_cam_and_saliency_find_the_region_the_model_looks_at():
    objective = ClassificationObjective(LooksAtOneRegion().eval())
    images = torch.rand(4, 3, SIZE, SIZE)
    layer = cam_layer(objective, images)
    assert layer is objective.model.second
    inside = torch.nn.functional.max_pool2d(region_mask()[None], 3, 1, 1)[0].bool()  # the region and its halo
    for maps in (attribution_maps(objective, images, layer), attribution_maps(objective, images, None)):
        assert maps.shape == (4, SIZE, SIZE) and maps.sum() > 0
        assert maps[:, ~inside].abs().max() == 0
    flat = ClassificationObjective(nn.Sequential(nn.Flatten(), nn.Linear(3 * SIZE * SIZE, 3)))
    assert cam_layer(flat, images) is None  # not convolutional: saliency


def test_shift_measures_read_identical_opposite_and_disjoint_maps():
    maps = torch.arange(2 * 25, dtype=torch.float).reshape(2, 5, 5)
    assert torch.allclose(rank_correlation(maps, maps), torch.ones(2))
    assert torch.allclose(rank_correlation(maps, -maps), -torch.ones(2))
    assert rank_correlation(maps, torch.zeros_like(maps)).isnan().all()
    assert torch.equal(top_iou(maps, maps), torch.ones(2))
    assert torch.equal(top_iou(maps, -maps), torch.zeros(2))


def test_tsne_separates_separable_features_and_mixes_the_same_distribution():
    generator = torch.Generator().manual_seed(0)
    clean, shifted = torch.randn(12, 16, generator=generator), torch.randn(12, 16, generator=generator) + 6
    groups = torch.cat([torch.zeros(12), torch.ones(12)])
    assert neighbour_agreement(tsne_embedding(torch.cat([clean, shifted])), groups) == 1.0
    same = torch.randn(24, 16, generator=generator)
    assert neighbour_agreement(tsne_embedding(same), groups) < 0.8
    pairs = torch.cat([clean, clean + 0.01])  # each adversarial point beside its own clean one
    partners = torch.arange(24).roll(12)
    embedding = tsne_embedding(pairs)
    assert neighbour_agreement(embedding, groups) < 0.2 < neighbour_agreement(embedding, groups, partners) < 0.8


def test_config_block_is_checked():
    assert check_analysis({"samples": 4, "radius": "4/255"}) == {"samples": 4, "radius": "4/255"}
    for bad, message in (([4], "mapping"), ({"sample": 4}, "unknown"), ({"points": 4}, "odd"),
                         ({"radius": 2}, "radius")):
        with pytest.raises(ValueError, match=message):
            check_analysis(bad)


def test_inside_trainer_test_the_analysis_adds_metrics_and_arrays_and_leaves_the_model():
    module = half_frozen_classifier(0)
    for norm in module.modules():  # timm starts each residual branch at zero, which zeroes every Grad-CAM
        if isinstance(norm, nn.BatchNorm2d):
            nn.init.uniform_(norm.weight, 0.5, 1.5)
    before = snapshot(module)
    analysis = AdversarialAnalysis(samples=4, points=3, features=8)
    evaluation = AdversarialEvaluation({"fgsm": lambda eps: FGSM(eps=eps)}, [8 / 255], brisque=False,
                                       analysis=analysis)
    trainer = L.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                        enable_model_summary=False, limit_test_batches=1, callbacks=[evaluation])
    datamodule = SyntheticFundusDataModule(num_samples=40, size=32, seed=0, batch_size=8)
    trainer.test(module, datamodule=datamodule, verbose=False)
    assert_unchanged(module, before)
    results = evaluation.results
    assert results["clean/sharpness"] >= 0 and math.isfinite(results["clean/sharpness_random"])
    assert -1 <= results["adv/fgsm/8_255/cam_rank_corr"] <= 1 and 0 <= results["adv/fgsm/8_255/cam_iou"] <= 1
    assert 0 <= results["adv/fgsm/8_255/tsne_separation"] <= 1
    arrays = analysis.arrays("fgsm/8_255")
    assert arrays["landscape/losses"].shape == (4, 3, 3)
    assert arrays["features/embedding"].shape == (16, 2) and arrays["features/adversarial"].sum() == 8
    overlays = attribution_overlays(arrays)
    assert len(overlays) == 4 and overlays[0][0].shape == (3, 32, 32) and overlays[0][0].dtype == torch.uint8
    assert analysis.arrays("pgd/8_255") == {}
