"""Universal adversarial perturbations: fitting, budget, targeted and non-targeted effect against the
random control, persistence, and the attack rules when applied."""

import pytest
import torch
from torch import nn

from attacks.universal import (
    UniversalPerturbation,
    batch_images,
    fooling_rate,
    random_perturbation_like,
    targeted_success_rate,
)
from lightning_modules.objectives import ClassificationObjective
from tests.attacks.invariants import assert_invariants, model_state
from tests.attacks.toys import blob_images

EPS = {"linf": 16 / 255, "l2": 1.0}
TARGET_CLASS = 2



@pytest.fixture(scope="module")
def fitting_data():
    """128 blob images (seen by neither toy model) the perturbations are fitted on."""
    return blob_images(128, torch.Generator().manual_seed(5))


def loader(data, dense=False, as_dict=False, batch_size=32):
    images, labels, masks = data
    target = masks if dense else labels
    starts = range(0, len(images), batch_size)
    batches = [(images[i : i + batch_size], target[i : i + batch_size]) for i in starts]
    return [{"image": x, "target": y} for x, y in batches] if as_dict else batches


def size(delta, norm):
    flat = delta.flatten()
    return flat.abs().max().item() if norm == "linf" else flat.norm().item()


def fitted(objective, data, norm, dense=False, **settings):
    attack = UniversalPerturbation(eps=EPS[norm], norm=norm, **settings)
    attack.fit(objective, loader(data, dense=dense))
    return attack


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_invariants_classifier(norm, toy_classifier, toy_batch, fitting_data):
    images, labels, _ = toy_batch
    attack = fitted(toy_classifier, fitting_data, norm, max_epochs=2)
    assert_invariants(attack, toy_classifier, images, labels, norm, EPS[norm])


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_invariants_segmenter(norm, toy_segmenter, toy_batch, fitting_data):
    images, _, masks = toy_batch
    attack = fitted(toy_segmenter, fitting_data, norm, dense=True, max_epochs=2)
    assert size(attack.perturbation, norm) > 0
    assert_invariants(attack, toy_segmenter, images, masks, norm, EPS[norm])


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_untargeted_perturbation_fools_far_more_than_random_control(
    norm, toy_classifier, toy_batch, fitting_data
):
    images, labels, _ = toy_batch
    attack = fitted(toy_classifier, fitting_data, norm, target_fooling_rate=0.5, max_epochs=4)
    perturbation = attack.perturbation
    assert perturbation.shape == images.shape[1:]
    assert size(perturbation, norm) <= EPS[norm] + 1e-6
    adv = attack(toy_classifier, images, labels).adv_images
    control = random_perturbation_like(perturbation, norm, torch.Generator().manual_seed(0))
    random_rate = fooling_rate(toy_classifier, images, (images + control).clamp(0, 1))
    rate = fooling_rate(toy_classifier, images, adv)
    # a v that lights one quadrant fools the three other classes: at most 3/4 on balanced blobs
    assert rate >= 0.35 and random_rate <= 0.05
    assert rate >= random_rate + 0.3


def test_targeted_perturbation_reaches_target_class_for_majority(toy_classifier, toy_batch, fitting_data):
    images, labels, _ = toy_batch
    attack = fitted(toy_classifier, fitting_data, "linf", target_class=TARGET_CLASS)
    result = attack(toy_classifier, images, labels)
    others = labels != TARGET_CLASS
    control = random_perturbation_like(attack.perturbation, "linf", torch.Generator().manual_seed(0))
    reached = targeted_success_rate(toy_classifier, result.adv_images[others], TARGET_CLASS)
    randomised = (images + control).clamp(0, 1)[others]
    random_reached = targeted_success_rate(toy_classifier, randomised, TARGET_CLASS)
    assert reached > 0.5 and random_reached < 0.1
    assert torch.equal(result.extras["goal"], torch.full_like(labels, TARGET_CLASS))


def test_fit_stops_once_the_target_fooling_rate_is_reached(toy_classifier, fitting_data):
    early = fitted(toy_classifier, fitting_data, "l2", step=0.1, target_fooling_rate=0.3, max_epochs=10)
    assert early.fit_history[-1] >= 0.3
    assert all(rate < 0.3 for rate in early.fit_history[:-1])
    assert len(early.fit_history) < 10
    assert early.fit_summary["fit_epochs"] == len(early.fit_history) and early.fit_summary["fit_rate_reached"] == 1
    unreachable = fitted(toy_classifier, fitting_data, "l2", step=0.1, target_fooling_rate=1.0, max_epochs=3)
    assert len(unreachable.fit_history) == 3
    assert unreachable.fit_summary["fit_rate_reached"] == 0


def test_fit_reports_each_epoch_and_reads_at_most_max_fit_images(toy_classifier, fitting_data):
    lines: list[str] = []
    attack = UniversalPerturbation(eps=EPS["linf"], max_epochs=2, target_fooling_rate=1.0, max_fit_images=40)
    attack.fit(toy_classifier, loader(fitting_data), progress=lines.append)
    assert len(lines) == 2 and lines[-1].startswith("uap fit epoch 2/2: fooling rate")
    assert attack.fit_summary["fit_images"] == 40  # 32 + 8 of the second batch
    assert f"{attack.fit_history[-1]:.3f}" in lines[-1]


def test_fit_rate_matches_the_fooling_rate_on_the_fitted_data(toy_classifier, fitting_data):
    attack = fitted(toy_classifier, fitting_data, "linf", max_epochs=2)
    images = fitting_data[0]
    adv = (images + attack.perturbation).clamp(0, 1)
    assert attack.fit_history[-1] == pytest.approx(fooling_rate(toy_classifier, images, adv))


def test_dict_and_tuple_loaders_fit_the_same_perturbation(toy_classifier, fitting_data):
    attack = UniversalPerturbation(eps=EPS["linf"], max_epochs=2)
    from_tuples = attack.fit(toy_classifier, loader(fitting_data))
    from_dicts = attack.fit(toy_classifier, loader(fitting_data, as_dict=True))
    assert torch.equal(from_tuples, from_dicts)
    assert batch_images({"image": fitting_data[0]}) is fitting_data[0]


def test_fit_leaves_the_model_unchanged(toy_classifier, fitting_data):
    model = toy_classifier.model
    params, modes, flags = model_state(toy_classifier)
    model.train()
    try:
        UniversalPerturbation(eps=EPS["linf"], max_epochs=1).fit(toy_classifier, loader(fitting_data))
        after, modes_after, _ = model_state(toy_classifier)
        assert all(module.training for module in model.modules())
        assert all(torch.equal(after[k], params[k]) for k in params)  # BatchNorm statistics included
        assert all(p.grad is None for p in model.parameters())
        assert {k: p.requires_grad for k, p in model.named_parameters()} == flags
    finally:
        for name, module in model.named_modules():
            module.training = modes[name]


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_random_control_has_the_same_norm(norm):
    perturbation = torch.randn(3, 8, 8, generator=torch.Generator().manual_seed(1))
    control = random_perturbation_like(perturbation, norm, torch.Generator().manual_seed(2))
    assert size(control, norm) == pytest.approx(size(perturbation, norm), rel=1e-5)
    assert not torch.allclose(control, perturbation)


def test_rates_on_hand_made_predictions(toy_classifier, toy_segmenter, toy_batch):
    images, _, masks = toy_batch
    assert fooling_rate(toy_classifier, images, images) == 0.0
    with torch.no_grad():
        predicted = toy_classifier.predict(toy_classifier.forward(images))
        segmented = toy_segmenter.predict(toy_segmenter.forward(images))
    expected = (predicted == TARGET_CLASS).float().mean().item()
    assert targeted_success_rate(toy_classifier, images, TARGET_CLASS) == pytest.approx(expected)
    # dense tasks: the fraction of pixels predicted as the class
    foreground = (segmented == 1).float().mean().item()
    assert targeted_success_rate(toy_segmenter, images, 1) == pytest.approx(foreground)


def test_save_and_load_round_trip(tmp_path, toy_classifier, toy_batch, fitting_data):
    images, labels, _ = toy_batch
    attack = fitted(toy_classifier, fitting_data, "l2", target_class=1, max_epochs=2)
    path = tmp_path / "uap.pt"
    attack.save(path)
    loaded = UniversalPerturbation.load(path)
    assert loaded.settings == attack.settings
    assert torch.equal(loaded.perturbation, attack.perturbation)
    adv = attack(toy_classifier, images, labels).adv_images
    assert torch.equal(loaded(toy_classifier, images, labels).adv_images, adv)
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        UniversalPerturbation.load(tmp_path / "missing.pt")


def test_unfitted_or_mismatched_perturbation_is_refused(toy_classifier, toy_batch, fitting_data):
    images, labels, _ = toy_batch
    attack = UniversalPerturbation(eps=EPS["linf"], max_epochs=1)
    with pytest.raises(ValueError, match="not fitted"):
        attack(toy_classifier, images, labels)
    with pytest.raises(ValueError, match="not fitted"):
        attack.save("unused.pt")
    attack.fit(toy_classifier, loader(fitting_data))
    with pytest.raises(ValueError, match="shape"):
        attack(toy_classifier, images[:, :, :8, :8], labels)


def test_fit_refuses_empty_or_inconsistent_loaders(toy_classifier, fitting_data):
    attack = UniversalPerturbation(eps=EPS["linf"], max_epochs=1)
    with pytest.raises(ValueError, match="no batches"):
        attack.fit(toy_classifier, [])
    images, labels, _ = fitting_data
    with pytest.raises(ValueError, match="shape"):
        attack.fit(toy_classifier, [(images[:4], labels[:4]), (images[4:8, :, :8, :8], labels[4:8])])
    with pytest.raises(ValueError, match="batch"):
        attack.fit(toy_classifier, [images[:4]])


@pytest.mark.parametrize(
    ("settings", "argument"),
    [
        ({"eps": -0.1}, "eps"),
        ({"eps": 0.1, "norm": "l1"}, "norm"),
        ({"eps": 0.1, "step": 0.0}, "step"),
        ({"eps": 0.1, "max_epochs": 0}, "max_epochs"),
        ({"eps": 0.1, "target_fooling_rate": 0.0}, "target_fooling_rate"),
        ({"eps": 0.1, "target_fooling_rate": 1.5}, "target_fooling_rate"),
        ({"eps": 0.1, "target_class": -1}, "target_class"),
    ],
)
def test_constructor_rejects_bad_arguments(settings, argument):
    with pytest.raises(ValueError, match=argument):
        UniversalPerturbation(**settings)


def test_fit_reads_at_most_max_fit_images():
    """The fit stops reading the loader after ``max_fit_images`` images, every epoch."""
    seen = []

    class CountingLoader:
        def __iter__(self):
            for start in range(0, 40, 8):
                seen.append(start)
                yield {"image": torch.rand(8, 3, 8, 8, generator=torch.Generator().manual_seed(start))}

    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 3))
    attack = UniversalPerturbation(eps=8 / 255, max_epochs=2, target_fooling_rate=1.0, max_fit_images=12)
    attack.fit(ClassificationObjective(model), CountingLoader())
    assert seen == [0, 8] * 4  # two epochs, each a fit pass and a fooling-rate pass over 12 images
    assert attack.settings["max_fit_images"] == 12
