"""Checkpoints of every task module restore with ``load_from_checkpoint(path, weights_only=True)``."""

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader

from lightning_modules.classifier import ClassifierModule
from lightning_modules.detector import DetectorModule
from lightning_modules.segmenter import SegmenterModule


def classifier_case():
    module = ClassifierModule(num_classes=3, in_channels=1, ma_head=True, mean=(0.4,), std=(0.3,))
    return module, {"image": torch.rand(4, 1, 32, 32), "target": torch.tensor([0, 1, 2, 0]), "id": list("abcd")}


def segmenter_case():
    module = SegmenterModule(encoder_depth=3, decoder_channels=(16, 8, 4), mean=(0.2,), std=(0.6,))
    return module, {"image": torch.rand(2, 1, 32, 32), "target": torch.randint(0, 2, (2, 32, 32)), "id": ["a", "b"]}


def detector_case():
    module = DetectorModule(num_classes=2, min_size=64, max_size=64, proposals_per_image=10)
    target = {"boxes": torch.tensor([[4.0, 4.0, 30.0, 40.0]]), "labels": torch.tensor([2])}
    return module, {"image": torch.rand(2, 3, 64, 64), "target": [target, target], "id": ["a", "b"]}


def outputs(module, images):
    if isinstance(module, DetectorModule):
        return [tensor for detection in module(images) for tensor in detection.values()]
    return [module(images)]


@pytest.mark.parametrize("case", [classifier_case, segmenter_case, detector_case])
def test_save_and_load_round_trip_gives_identical_outputs(case, tmp_path):
    torch.manual_seed(0)
    module, batch = case()
    trainer = L.Trainer(
        max_steps=1,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
    )
    trainer.fit(module, train_dataloaders=DataLoader([batch], batch_size=None))
    path = tmp_path / "module.ckpt"
    trainer.save_checkpoint(path)
    restored = type(module).load_from_checkpoint(path, weights_only=True)
    assert dict(restored.hparams) == dict(module.hparams)
    module.eval(), restored.eval()
    with torch.no_grad():
        for mine, theirs in zip(outputs(module, batch["image"]), outputs(restored, batch["image"]), strict=True):
            torch.testing.assert_close(mine, theirs, rtol=0, atol=0)
