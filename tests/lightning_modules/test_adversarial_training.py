"""Adversarial training as an option of the task modules: off it changes nothing, each method's loss is its
formula, the attack leaves the module ready to train, configs set it, and trained models get more robust."""

import copy
from functools import partial

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from attacks import PGD
from benchmarks.grid import CONFIG_DIR
from benchmarks.training import build_cli
from datamodules import MedMNISTDataModule, SyntheticLungCTDataModule, shared_data_dir
from lightning_modules.adversarial_training import AdversarialTraining
from lightning_modules.classifier import ClassifierModule
from lightning_modules.segmenter import SegmenterModule
from tests.attacks.invariants import accuracy, assert_budget
from tests.datamodules.files import write_medmnist
from tests.lightning_modules.trained import fit, quick_trainer

EPS = 8 / 255
TRAIN_CONFIGS = CONFIG_DIR / "train"


def tiny_classifier(**options) -> ClassifierModule:
    """timm's test ResNet (0.4 M parameters, BatchNorm) grading 3 classes of grey images, from seed 0."""
    torch.manual_seed(0)
    return ClassifierModule("test_resnet", num_classes=3, in_channels=1, **options)


def tiny_unet(**options) -> SegmenterModule:
    torch.manual_seed(0)
    return SegmenterModule(encoder_depth=3, decoder_channels=(16, 8, 4), lr=3e-3, **options)


def classification_batches(count: int, size: int = 16, n: int = 8) -> list[dict]:
    generator = torch.Generator().manual_seed(1)
    return [
        {
            "image": torch.rand(n, 1, size, size, generator=generator),
            "target": torch.randint(0, 3, (n,), generator=generator),
            "id": [f"{step}-{i}" for i in range(n)],
        }
        for step in range(count)
    ]


def lung_batch(n: int = 4) -> dict:
    datamodule = SyntheticLungCTDataModule(num_samples=8, size=32, seed=0, batch_size=n, augment=False)
    datamodule.setup("fit")
    return next(iter(datamodule.train_dataloader()))


def lightning_fit(module, batches: list[dict]):
    quick_trainer(max_steps=len(batches)).fit(module.train(), train_dataloaders=DataLoader(batches, batch_size=None))
    return module


def plain_fit(module: ClassifierModule, batches: list[dict]) -> ClassifierModule:
    """Standard training written out: cross entropy, AdamW, the learning rate along a cosine over the steps."""
    hparams = module.hparams
    optimizer = torch.optim.AdamW(module.parameters(), lr=hparams.lr, weight_decay=hparams.weight_decay)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=len(batches))
    module.train()
    for batch in batches:
        optimizer.zero_grad()
        F.cross_entropy(module(batch["image"]), batch["target"]).backward()
        optimizer.step()
        schedule.step()
    return module


def assert_same_state(module, other) -> None:
    theirs = other.state_dict()
    assert all(torch.equal(value, theirs[name]) for name, value in module.state_dict().items())


def test_without_the_option_and_with_pgd_at_eps_zero_training_is_plain_cross_entropy_training():
    batches = classification_batches(3)
    reference = plain_fit(tiny_classifier(), batches)
    assert_same_state(lightning_fit(tiny_classifier(), batches), reference)
    at_zero = tiny_classifier(adversarial_training={"method": "pgd", "eps": 0, "steps": 2})
    assert_same_state(lightning_fit(at_zero, batches), reference)
    assert not torch.equal(reference.classifier.weight, tiny_classifier().classifier.weight)  # it did train


def batch_of(task: str) -> tuple[dict, type]:
    if task == "classification":
        return classification_batches(1)[0], tiny_classifier
    return lung_batch(), tiny_unet


def settled(module, images: torch.Tensor):
    """``module`` in train mode after train-mode passes over ``images`` that bring BatchNorm's running statistics
    to the batch's (an untrained network in eval mode, where attacks run, is nearly constant)."""
    module.train()
    with torch.no_grad():
        for _ in range(30):
            module(images)
    return module


def binary_or_softmax_kl(clean, adv) -> torch.Tensor:
    """Per-sample KL(f(x) || f(x')) written per task: softmax over classes, or Bernoulli over pixels."""
    if clean.dim() == 2:
        return F.kl_div(adv.log_softmax(1), clean.log_softmax(1), log_target=True, reduction="none").sum(1)
    p, log_p, log_q = clean.sigmoid(), F.logsigmoid(clean), F.logsigmoid(adv)
    log_not_p, log_not_q = F.logsigmoid(-clean), F.logsigmoid(-adv)
    return (p * (log_p - log_q) + (1 - p) * (log_not_p - log_not_q)).flatten(1).mean(1)


@pytest.mark.parametrize("task", ["classification", "segmentation"])
def test_trades_loss_is_the_clean_loss_plus_beta_times_kl_at_its_adversarial_images(task):
    batch, build = batch_of(task)
    images, target = batch["image"], batch["target"]
    module = settled(build(adversarial_training={"method": "trades", "eps": EPS, "steps": 3, "beta": 6.0}), images)
    result = module.adversarial_training.training_loss(module, images, target)
    assert_budget(result.adv_images, images, "linf", EPS)
    assert result.adv_images.min() >= 0 and result.adv_images.max() <= 1
    clean, adv = module(images), module(result.adv_images)  # train mode: batch statistics, as in the step
    expected = module.task_loss(clean, target) + 6.0 * binary_or_softmax_kl(clean, adv).mean()
    torch.testing.assert_close(result.loss, expected)
    torch.testing.assert_close(result.outputs, adv)
    module.eval()
    with torch.no_grad():  # the KL-PGD image diverges more than a random corner of the ball
        corner = (images + EPS * torch.randn(images.shape).sign()).clamp(0, 1)
        reference = module(images)
        assert (
            binary_or_softmax_kl(reference, module(result.adv_images)).mean()
            > binary_or_softmax_kl(reference, module(corner)).mean()
        )


@pytest.mark.parametrize("task", ["classification", "segmentation"])
def test_trades_with_beta_zero_and_pgd_with_eps_zero_give_the_clean_loss(task):
    batch, build = batch_of(task)
    images, target = batch["image"], batch["target"]
    for settings in ({"method": "trades", "beta": 0.0, "steps": 2}, {"method": "pgd", "eps": 0, "steps": 2}):
        module = build(adversarial_training=settings).train()
        result = module.adversarial_training.training_loss(module, images, target)
        assert torch.equal(result.loss, module.task_loss(module(images), target))


@pytest.mark.parametrize("task", ["classification", "segmentation"])
def test_pgd_at_loss_is_the_task_loss_at_images_that_raise_the_objective_loss(task):
    batch, build = batch_of(task)
    images, target = batch["image"], batch["target"]
    module = settled(build(adversarial_training={"method": "pgd", "eps": EPS, "steps": 3}), images)
    result = module.adversarial_training.training_loss(module, images, target)
    assert_budget(result.adv_images, images, "linf", EPS)
    assert torch.equal(result.loss, module.task_loss(module(result.adv_images), target))
    objective = module.eval().objective()
    with torch.no_grad():
        clean_loss = objective.loss(objective.forward(images), target).mean()
        assert objective.loss(objective.forward(result.adv_images), target).mean() > clean_loss


def test_fast_at_steps_one_and_a_quarter_eps_along_the_gradient_sign_from_a_uniform_start():
    # a linear two-class model: the sign of the input gradient of the cross entropy is the same everywhere,
    # sign((p1 - y) (w1 - w0)), so |uniform start + 1.25 eps sign(g)| lies in [0.25 eps, eps] along sign(g)
    module = tiny_classifier(adversarial_training={"method": "fast", "eps": EPS})
    module.backbone, module.classifier = nn.Flatten(), nn.Linear(64, 2)
    images = EPS + (1 - 2 * EPS) * torch.rand(6, 1, 8, 8)  # far enough from 0 and 1 that nothing clamps
    target = torch.tensor([0, 1, 0, 1, 0, 1])
    result = module.train().adversarial_training.training_loss(module, images, target)
    x = images.clone().requires_grad_(True)
    (gradient,) = torch.autograd.grad(F.cross_entropy(module(x), target, reduction="sum"), x)
    delta = result.adv_images - images
    assert torch.equal(delta.sign(), gradient.sign())
    assert delta.abs().min() >= 0.25 * EPS - 1e-6 and delta.abs().max() <= EPS + 1e-6
    assert torch.equal(result.loss, F.cross_entropy(module(result.adv_images), target))


@pytest.mark.parametrize("method", ["pgd", "trades", "fast"])
def test_the_attack_runs_in_eval_mode_and_leaves_the_module_ready_to_train(method):
    module = tiny_classifier(adversarial_training={"method": method, "eps": EPS, "steps": 2}).train()
    batch = classification_batches(1)[0]
    twin = copy.deepcopy(module)
    result = module.adversarial_training.training_loss(module, batch["image"], batch["target"])
    assert all(m.training for m in module.modules()) and all(p.requires_grad for p in module.parameters())
    assert all(p.grad is None for p in module.parameters())
    # BatchNorm statistics moved only by the loss's own forward passes, none by the attack's steps
    if method == "trades":
        twin(batch["image"])
    twin(result.adv_images)
    assert_same_state(module, twin)
    result.loss.backward()
    assert all(p.grad is not None for p in module.parameters())


def test_warm_up_ramps_eps_linearly_over_the_first_epochs_and_alpha_follows_eps():
    option = AdversarialTraining(eps=0.04, alpha="eps/4", warmup_epochs=4)
    assert [option.budget(epoch) for epoch in range(6)] == pytest.approx([0, 0.01, 0.02, 0.03, 0.04, 0.04])
    assert option.step_size(0.02) == pytest.approx(0.005)
    assert option.attack(0.02, seed=0).alpha == pytest.approx(0.005)
    assert AdversarialTraining(eps="8/255").budget(0) == EPS
    assert AdversarialTraining(method="fast", eps=0.04).attack(0.04, seed=0).alpha == pytest.approx(0.05)
    assert AdversarialTraining(alpha="2/255").step_size(0.1) == pytest.approx(2 / 255)


@pytest.mark.parametrize(
    ("settings", "named"),
    [
        ({"method": "free"}, "method"),
        ({"eps": "min"}, "eps"),
        ({"eps": -0.1}, "eps"),
        ({"beta": -1.0}, "beta"),
        ({"warmup_epochs": -1}, "warmup_epochs"),
        ({"steps": 0}, "steps"),
        ({"norm": "l3"}, "norm"),
        ({"alpha": "eps times 2"}, "alpha"),
        ({"alpha": "min"}, "alpha"),
        ({"epsilon": 0.1}, "epsilon"),
    ],
)
def test_bad_settings_raise_one_value_error_naming_them_when_the_module_is_built(settings, named):
    with pytest.raises(ValueError, match=named):
        ClassifierModule("test_resnet", num_classes=2, adversarial_training=settings)


def test_train_configs_set_the_option_and_hparams_and_checkpoints_keep_it(tmp_path):
    write_medmnist(tmp_path / "pneumoniamnist.npz", {"train": 8, "val": 4, "test": 4}, 2, rgb=False, column=True)
    config = TRAIN_CONFIGS / "pneumoniamnist_trades.yaml"
    module = build_cli(config, tmp_path, [f"--data.init_args.root={tmp_path}"]).model
    option = module.adversarial_training
    assert (option.method, option.eps, option.beta, option.warmup_epochs) == ("trades", EPS, 6.0, 2)
    assert module.hparams.adversarial_training["eps"] == "8/255"
    # as a benchmark's model variant passes it (grid.override_args)
    override = '--model.init_args.adversarial_training={"method": "fast", "eps": "4/255"}'
    plain = TRAIN_CONFIGS / "pneumoniamnist.yaml"
    varied = build_cli(plain, tmp_path, [f"--data.init_args.root={tmp_path}", override]).model
    assert (varied.adversarial_training.method, varied.adversarial_training.eps) == ("fast", 4 / 255)
    assert build_cli(plain, tmp_path, [f"--data.init_args.root={tmp_path}"]).model.adversarial_training is None

    module = tiny_classifier(adversarial_training={"method": "trades", "eps": "4/255", "beta": 3.0})
    trainer = quick_trainer(max_steps=1)
    trainer.fit(module, train_dataloaders=DataLoader(classification_batches(1), batch_size=None))
    trainer.save_checkpoint(tmp_path / "module.ckpt")
    restored = ClassifierModule.load_from_checkpoint(tmp_path / "module.ckpt", weights_only=True)
    assert restored.hparams.adversarial_training == {"method": "trades", "eps": "4/255", "beta": 3.0}
    assert (restored.adversarial_training.eps, restored.adversarial_training.beta) == (4 / 255, 3.0)


def adversarial_pixel_loss(module: SegmenterModule, batch: dict) -> float:
    objective = module.eval().objective()
    adv = PGD(eps=0.03, steps=5)(objective, batch["image"], batch["target"]).adv_images
    with torch.no_grad():
        return objective.loss(objective.forward(adv), batch["target"]).mean().item()


def test_unet_adversarial_training_steps_lower_the_per_pixel_adversarial_loss():
    batch = lung_batch()
    module = tiny_unet(adversarial_training={"method": "pgd", "eps": 0.03, "steps": 3})
    before = adversarial_pixel_loss(module, batch)
    lightning_fit(module, [batch] * 8)
    after = adversarial_pixel_loss(module, batch)
    assert after < 0.7 * before


def pgd_accuracy(module: ClassifierModule, images: torch.Tensor, labels: torch.Tensor, eps: float) -> float:
    objective = module.eval().objective()
    return accuracy(objective, PGD(eps=eps, steps=10)(objective, images, labels).adv_images, labels)


@pytest.mark.slow
@pytest.mark.realdata
def test_pgd_training_raises_pgd_accuracy_at_its_eps_on_pneumoniamnist():
    root = shared_data_dir()
    if root is None or not (root / "medmnist" / "pneumoniamnist.npz").is_file():
        pytest.skip("real data medmnist/pneumoniamnist.npz not found (set $MEDADV_DATA_DIR or provide ../shared/data)")
    datamodule = MedMNISTDataModule("pneumoniamnist", str(root / "medmnist"), size=28, num_classes=2, batch_size=64)
    eps = 2 / 255
    options = {"standard": None, "pgd_at": {"method": "pgd", "eps": eps, "steps": 3}}
    models = {
        name: fit(
            partial(ClassifierModule, "test_resnet", num_classes=2, adversarial_training=option),
            datamodule,
            max_epochs=2,
            limit_train_batches=25,
        )
        for name, option in options.items()
    }
    datamodule.setup("test")
    batches = list(datamodule.test_dataloader())
    images, labels = torch.cat([b["image"] for b in batches]), torch.cat([b["target"] for b in batches])
    majority = torch.bincount(labels).max().item() / len(labels)
    robust = {name: pgd_accuracy(module, images, labels, eps) for name, module in models.items()}
    # measured (468 balanced test images): PGD-10 accuracy 0.14 standard, 0.45 PGD-AT; clean 0.86 and 0.85
    assert robust["pgd_at"] > robust["standard"] + 0.1
    assert accuracy(models["pgd_at"].objective(), images, labels) > majority + 0.1
