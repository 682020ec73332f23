"""ClassifierModule: timm networks by name, normalisation inside forward, Ma et al.'s head, metrics."""

import time

import pytest
import torch
from huggingface_hub import constants
from sklearn.metrics import roc_auc_score

from lightning_modules import pretrained
from lightning_modules.classifier import MA_HIDDEN_FEATURES, ClassifierModule
from lightning_modules.normalization import IMAGENET_MEAN, IMAGENET_STD
from lightning_modules.objectives import ClassificationObjective


@pytest.mark.parametrize("name", ["resnet50", "mobilenetv3_large_100", "efficientnet_b0"])
def test_named_timm_networks_give_logits_and_features(name):
    module = ClassifierModule(name, num_classes=3, in_channels=1).eval()
    images = torch.rand(2, 1, 32, 32)
    features = module.features(images)
    assert module(images).shape == (2, 3)
    assert features.dim() == 2 and features.shape[0] == 2
    torch.testing.assert_close(module.classifier(features), module(images))


def test_normalisation_inside_forward_equals_feeding_normalised_images():
    mean, std = (0.2, 0.4, 0.6), (0.1, 0.2, 0.3)
    module = ClassifierModule(num_classes=4, mean=mean, std=std).eval()
    plain = ClassifierModule(num_classes=4, mean=(0.0,), std=(1.0,)).eval()
    plain.load_state_dict(
        {**module.state_dict(), "normalize.mean": plain.normalize.mean, "normalize.std": plain.normalize.std}
    )
    images = torch.rand(3, 3, 32, 32)
    normalised = (images - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    torch.testing.assert_close(module(images), plain(normalised))


@pytest.mark.parametrize(
    ("channels", "mean", "std"),
    [(3, IMAGENET_MEAN, IMAGENET_STD), (1, (0.5,), (0.5,)), (4, (0.5,) * 4, (0.5,) * 4)],
)
def test_default_statistics_are_imagenet_for_rgb_and_half_otherwise(channels, mean, std):
    module = ClassifierModule(in_channels=channels)
    torch.testing.assert_close(module.normalize.mean.flatten(), torch.tensor(mean))
    torch.testing.assert_close(module.normalize.std.flatten(), torch.tensor(std))


def test_ma_head_is_dense_128_relu_dropout_before_the_k_way_layer():
    module = ClassifierModule(ma_head=True, num_classes=5).eval()
    images = torch.rand(4, 3, 32, 32)
    features = module.features(images)
    assert features.shape == (4, MA_HIDDEN_FEATURES) and (features >= 0).all()
    torch.testing.assert_close(module.classifier(features), module(images))
    pooled = torch.randn(2000, module.neck[0].in_features)
    kept = module.neck(pooled)
    module.train()
    dropped = module.neck(pooled)
    active = kept > 0
    survivors = dropped[active] != 0
    torch.testing.assert_close(dropped[active][survivors], kept[active][survivors] / 0.8)
    assert survivors.float().mean().item() == pytest.approx(0.8, abs=0.02)


def test_objective_model_is_the_module_with_per_sample_loss():
    module = ClassifierModule(num_classes=3).eval()
    objective = module.objective()
    images, labels = torch.rand(4, 3, 32, 32), torch.tensor([0, 1, 2, 0])
    assert isinstance(objective, ClassificationObjective) and objective.model is module
    loss = objective.loss(objective.forward(images), labels)
    assert loss.shape == (4,)
    torch.testing.assert_close(loss[2:3], objective.loss(objective.forward(images[2:3]), labels[2:3]))


@pytest.mark.parametrize("num_classes", [2, 4])
def test_step_logs_loss_accuracy_and_one_vs_rest_auc(num_classes):
    module = ClassifierModule(num_classes=num_classes).eval()
    labels = torch.arange(8) % num_classes
    batch = {"image": torch.rand(8, 3, 32, 32), "target": labels, "id": [str(i) for i in range(8)]}
    with pytest.warns(UserWarning, match="trainer"):  # self.log outside a Trainer only warns
        loss = module.step(batch, "val")
    probabilities = module(batch["image"]).detach().softmax(dim=1)
    scores = module.stage_metrics["val_metrics"].compute()
    expected_auc = (
        roc_auc_score(labels, probabilities[:, 1])
        if num_classes == 2
        else roc_auc_score(labels, probabilities, multi_class="ovr", average="macro")
    )
    assert set(scores) == {"val_acc", "val_auc"}
    assert scores["val_acc"].item() == pytest.approx((probabilities.argmax(1) == labels).float().mean().item())
    assert scores["val_auc"].item() == pytest.approx(expected_auc, abs=1e-5)
    torch.testing.assert_close(module.losses["val_loss"].compute(), loss.detach())


def test_pretrained_weights_fail_fast_with_a_clear_message_when_unavailable(monkeypatch, tmp_path):
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr(pretrained, "hub_reachable", lambda timeout=3.0: False)
    offline_flag = constants.HF_HUB_OFFLINE
    start = time.monotonic()
    with pytest.raises(FileNotFoundError, match="model_name='resnet18'.*pretrained=False"):
        ClassifierModule("resnet18", pretrained=True)
    assert time.monotonic() - start < 30
    assert constants.HF_HUB_OFFLINE == offline_flag


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"model_name": "no_such_net"}, "model_name='no_such_net'"),
        ({"num_classes": 1}, "num_classes"),
        ({"in_channels": 3, "mean": (0.5, 0.5)}, "mean"),
        ({"std": (0.0,)}, "std"),
    ],
)
def test_bad_arguments_raise_value_errors_naming_them(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ClassifierModule(**kwargs)
