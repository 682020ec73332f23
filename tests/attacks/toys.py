"""Tiny trained models for attack tests: a blob-position classifier and a disc segmenter."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from lightning_modules.objectives import ClassificationObjective, SegmentationObjective

SIZE = 16


def blob_images(n: int, generator: torch.Generator) -> tuple[Tensor, Tensor, Tensor]:
    """Images (n, 3, 16, 16) in [0, 1] with a bright blob in one of 4 quadrants; label = quadrant."""
    labels = torch.randint(0, 4, (n,), generator=generator)
    images = 0.4 + 0.1 * torch.rand(n, 3, SIZE, SIZE, generator=generator)
    masks = torch.zeros(n, SIZE, SIZE, dtype=torch.long)
    yy, xx = torch.meshgrid(torch.arange(SIZE), torch.arange(SIZE), indexing="ij")
    for i, label in enumerate(labels.tolist()):
        cy = 4 + 8 * (label // 2) + int(torch.randint(-1, 2, (1,), generator=generator))
        cx = 4 + 8 * (label % 2) + int(torch.randint(-1, 2, (1,), generator=generator))
        disc = (yy - cy) ** 2 + (xx - cx) ** 2 <= 6
        images[i, :, disc] += 0.08 + 0.04 * torch.rand(3, int(disc.sum()), generator=generator)
        masks[i] = disc.long()
    return images.clamp(0, 1), labels, masks


def small_cnn(out_channels: int, dense: bool) -> nn.Module:
    layers: list[nn.Module] = [
        nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
        nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(),
    ]
    if dense:
        layers.append(nn.Conv2d(16, out_channels, 1))
    else:
        layers += [nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(64, out_channels)]
    return nn.Sequential(*layers)


def train(model: nn.Module, images: Tensor, targets: Tensor, loss_fn: nn.Module, epochs: int = 60) -> nn.Module:
    torch.manual_seed(0)
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(epochs):
        for start in range(0, len(images), 64):
            optimiser.zero_grad()
            loss_fn(model(images[start:start + 64]), targets[start:start + 64]).backward()
            optimiser.step()
    optimiser.zero_grad(set_to_none=True)
    return model.eval()


def trained_classifier() -> ClassificationObjective:
    images, labels, _ = blob_images(256, torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    return ClassificationObjective(train(small_cnn(4, dense=False), images, labels, nn.CrossEntropyLoss()))


def trained_segmenter() -> SegmentationObjective:
    images, _, masks = blob_images(256, torch.Generator().manual_seed(1))
    torch.manual_seed(0)
    return SegmentationObjective(train(small_cnn(2, dense=True), images, masks, nn.CrossEntropyLoss(), epochs=30))
