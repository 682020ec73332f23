"""Black-box attacks: Square (score-based random search), one-pixel (differential evolution) and
transfer from a surrogate or an ensemble to an independently trained classifier."""

import pytest
import torch
from torch import nn

from attacks.cw import class_margin
from attacks.gradient import PGD
from attacks.one_pixel import OnePixelAttack, paint_pixels
from attacks.square import SquareAttack, p_schedule, square_side
from attacks.transfer import EnsembleObjective, TransferAttack
from lightning_modules.objectives import ClassificationObjective
from tests.attacks.invariants import assert_independent_with_ids, assert_invariants, model_state
from tests.attacks.toys import blob_images, small_cnn, train

EPS = 8 / 255



@pytest.fixture(scope="module")
def second_classifier():
    """A toy classifier trained independently of ``toy_classifier``: other images, other initial weights."""
    images, labels, _ = blob_images(256, torch.Generator().manual_seed(11))
    torch.manual_seed(1)
    model = train(small_cnn(4, dense=False), images, labels, nn.CrossEntropyLoss(), epochs=30)
    model.zero_grad(set_to_none=True)
    return ClassificationObjective(model)


@pytest.fixture(scope="module")
def ambiguous(toy_classifier):
    """Two half-contrast blobs in different quadrants, near the toy classifier's decision boundary:
    (images, predicted class, the other blob's class)."""
    first, first_labels, _ = blob_images(48, torch.Generator().manual_seed(321))
    second, second_labels, _ = blob_images(48, torch.Generator().manual_seed(322))
    keep = first_labels != second_labels
    images = (0.5 * (first + second))[keep][:8]
    with torch.no_grad():
        predicted = predict(toy_classifier, images)
    other = torch.where(predicted == first_labels[keep][:8], second_labels[keep][:8], first_labels[keep][:8])
    return images, predicted, other


def predict(objective, images):
    with torch.no_grad():
        return objective.predict(objective.forward(images))


def accuracy(objective, images, labels):
    return (predict(objective, images) == labels).float().mean().item()


def sign_noise(images, eps, seed=0):
    signs = torch.randint(0, 2, images.shape, generator=torch.Generator().manual_seed(seed)) * 2.0 - 1
    return (images + eps * signs).clamp(0, 1)


def changed_pixels(adv, images):
    return (adv != images).any(dim=1).flatten(1).sum(dim=1)


def true_probability(objective, images, labels):
    with torch.no_grad():
        return objective.forward(images).softmax(dim=1).gather(1, labels[:, None]).squeeze(1)


# ---------------------------------------------------------------- Square


def test_square_invariants(toy_classifier, toy_batch):
    images, labels, _ = toy_batch
    attack = SquareAttack(eps=EPS, max_queries=40)
    result = assert_invariants(attack, toy_classifier, images, labels, "linf", EPS)
    assert (result.trace.queries <= 40).all()


def test_square_fools_most_samples_with_a_small_query_budget(toy_classifier, toy_batch):
    images, labels, _ = toy_batch
    images, labels = images[:16], labels[:16]
    result = SquareAttack(eps=EPS, max_queries=1000, p_init=0.3)(toy_classifier, images, labels)
    fooled = predict(toy_classifier, result.adv_images) != labels
    assert fooled.float().mean() >= 0.9
    assert accuracy(toy_classifier, sign_noise(images, EPS), labels) >= 0.9
    # a fooled sample stops querying; one that is not has spent the whole budget
    queries = result.trace.queries
    assert (queries[fooled] < 1000).all() and (queries[~fooled] == 1000).all()
    assert queries.float().mean() < 500


def test_square_targeted_reaches_the_given_class(toy_classifier, toy_batch):
    images, labels, _ = toy_batch
    images, labels = images[:8], labels[:8]
    goal = (labels + 1) % 4
    attack = SquareAttack(eps=EPS, max_queries=1000, p_init=0.3, target_mode="given")
    result = attack(toy_classifier, images, goal)
    assert (predict(toy_classifier, result.adv_images) == goal).float().mean() >= 0.75
    assert torch.equal(result.extras["goal"], goal)


def test_square_leaves_misclassified_samples_after_one_query(toy_classifier, toy_batch):
    images, labels, _ = toy_batch
    wrong = labels.clone()
    wrong[:2] = (labels[:2] + 1) % 4
    result = SquareAttack(eps=EPS, max_queries=20)(toy_classifier, images[:4], wrong[:4])
    assert torch.equal(result.trace.queries[:2], torch.ones(2, dtype=torch.long))
    assert torch.equal(result.adv_images[:2], images[:2])
    assert (result.trace.queries[2:] == 20).all()


def test_square_perturbation_is_plus_minus_eps_where_not_clipped(toy_classifier, toy_batch):
    images, labels, _ = toy_batch
    adv = SquareAttack(eps=EPS, max_queries=30)(toy_classifier, images, labels).adv_images
    delta = (adv - images).abs()
    inside = (images > EPS) & (images < 1 - EPS)
    torch.testing.assert_close(delta[inside], torch.full_like(delta[inside], EPS))


def test_p_schedule_and_square_side_closed_forms():
    assert p_schedule(0.8, 0, 10000) == 0.8
    assert p_schedule(0.8, 10, 10000) == 0.8
    assert p_schedule(0.8, 11, 10000) == 0.4
    assert p_schedule(0.8, 500, 10000) == 0.1
    assert p_schedule(0.8, 9999, 10000) == 0.8 / 512
    # the schedule is rescaled to the budget: iteration 2 of 1000 is iteration 20 of 10000
    assert p_schedule(0.8, 2, 1000) == 0.4
    assert square_side(0.05, 16, 16) == 4  # round(sqrt(0.05 * 256))
    assert square_side(1e-4, 16, 16) == 1
    assert square_side(1.0, 16, 32) == 15


def test_margin_closed_form():
    logits = torch.tensor([[3.0, 1.0, 2.0], [0.0, 5.0, -1.0]])
    torch.testing.assert_close(class_margin(logits, torch.tensor([0, 0])), torch.tensor([1.0, -5.0]))


# ---------------------------------------------------------------- one-pixel


@pytest.mark.parametrize("pixels", [1, 3])
def test_one_pixel_invariants_and_pixel_count(pixels, toy_classifier, toy_batch):
    images, labels, _ = toy_batch
    attack = OnePixelAttack(pixels=pixels, population=8, iterations=3)
    result = assert_invariants(attack, toy_classifier, images, labels, None, None)
    assert (changed_pixels(result.adv_images, images) <= pixels).all()
    assert (changed_pixels(result.adv_images, images) >= 1).all()


def test_paint_pixels_closed_form():
    images = torch.zeros(2, 3, 4, 5)
    genes = torch.tensor([[[1.0, 2.0, 0.1, 0.2, 0.3]], [[3.0, 4.0, 1.0, 1.0, 1.0]]])
    painted = paint_pixels(images, genes)
    expected = images.clone()
    expected[0, :, 1, 2] = torch.tensor([0.1, 0.2, 0.3])
    expected[1, :, 3, 4] = 1.0
    assert torch.equal(painted, expected)
    assert torch.equal(images, torch.zeros(2, 3, 4, 5))


def test_one_pixel_flips_ambiguous_images(toy_classifier, ambiguous):
    images, predicted, _ = ambiguous
    result = OnePixelAttack(pixels=1, population=20, iterations=10)(toy_classifier, images, predicted)
    fooled = predict(toy_classifier, result.adv_images) != predicted
    assert fooled.any()
    assert (changed_pixels(result.adv_images, images) == 1).all()
    # population-sized query rounds: the initial population plus one round per generation while active
    queries = result.trace.queries
    assert (queries % 20 == 0).all() and (queries <= 20 * 11).all()
    assert (queries[~fooled] == 20 * 11).all()


def test_one_pixel_targeted_moves_towards_the_other_blob(toy_classifier, ambiguous):
    images, predicted, other = ambiguous
    attack = OnePixelAttack(pixels=1, population=20, iterations=10, target_mode="given")
    result = attack(toy_classifier, images, other)
    assert (predict(toy_classifier, result.adv_images) == other).any()
    before = true_probability(toy_classifier, images, other)
    assert (true_probability(toy_classifier, result.adv_images, other) > before).all()
    assert torch.equal(result.extras["goal"], other)


def test_one_pixel_more_generations_never_raise_the_true_class_probability(toy_classifier, toy_batch):
    images, labels, _ = toy_batch
    images, labels = images[:8], labels[:8]
    short = OnePixelAttack(population=12, iterations=1)(toy_classifier, images, labels).adv_images
    long = OnePixelAttack(population=12, iterations=6)(toy_classifier, images, labels).adv_images
    short_p = true_probability(toy_classifier, short, labels)
    long_p = true_probability(toy_classifier, long, labels)
    assert (long_p <= short_p + 1e-6).all()  # elitist selection: a parent only gives way to a fitter child
    assert (long_p < short_p - 1e-6).any()


def test_one_pixel_chunk_size_does_not_change_the_result(toy_classifier, toy_batch):
    images, labels, _ = toy_batch
    images, labels = images[:6], labels[:6]
    whole = OnePixelAttack(population=10, iterations=3)(toy_classifier, images, labels)
    chunked = OnePixelAttack(population=10, iterations=3, chunk_size=7)(toy_classifier, images, labels)
    assert torch.equal(whole.adv_images, chunked.adv_images)
    assert torch.equal(whole.trace.queries, chunked.trace.queries)


SCORE_BASED = {
    "square": SquareAttack(eps=EPS, max_queries=60, p_init=0.3),
    "square_random_goal": SquareAttack(eps=EPS, max_queries=30, target_mode="random"),
    "one_pixel": OnePixelAttack(pixels=2, population=8, iterations=4),
    "one_pixel_random_goal": OnePixelAttack(population=8, iterations=4, target_mode="random"),
}


@pytest.mark.parametrize("case", SCORE_BASED, ids=list(SCORE_BASED))
def test_sample_ids_give_each_sample_its_own_draws(case, toy_classifier, toy_batch):
    images, labels, _ = toy_batch
    attack = SCORE_BASED[case]
    assert_independent_with_ids(attack, toy_classifier, images, labels)
    # with ids, proposals are no longer shared: the same image under two ids is attacked differently
    twins = attack(toy_classifier, images[:1].expand(2, -1, -1, -1), labels[:1].expand(2), ids=["a", "b"])
    assert not torch.equal(twins.adv_images[0], twins.adv_images[1])


@pytest.mark.parametrize(
    "attack", [SquareAttack(eps=EPS, max_queries=5), OnePixelAttack(population=4, iterations=1)]
)
def test_score_based_attacks_refuse_dense_objectives(attack, toy_segmenter, toy_batch):
    images, _, masks = toy_batch
    with pytest.raises(ValueError, match=r"\(B, K\)"):
        attack(toy_segmenter, images[:2], masks[:2])


@pytest.mark.parametrize(
    ("build", "argument"),
    [
        (lambda: SquareAttack(eps=-1.0), "eps"),
        (lambda: SquareAttack(eps=EPS, max_queries=1), "max_queries"),
        (lambda: SquareAttack(eps=EPS, p_init=0.0), "p_init"),
        (lambda: SquareAttack(eps=EPS, p_init=1.5), "p_init"),
        (lambda: SquareAttack(eps=EPS, target_mode="closest"), "target_mode"),
        (lambda: OnePixelAttack(pixels=0), "pixels"),
        (lambda: OnePixelAttack(population=3), "population"),
        (lambda: OnePixelAttack(iterations=0), "iterations"),
        (lambda: OnePixelAttack(mutation=0.0), "mutation"),
        (lambda: OnePixelAttack(chunk_size=0), "chunk_size"),
        (lambda: OnePixelAttack(target_mode="closest"), "target_mode"),
    ],
)
def test_constructors_reject_bad_arguments(build, argument):
    with pytest.raises(ValueError, match=argument):
        build()


# ---------------------------------------------------------------- transfer (crafted with attacks.gradient)


def test_transfer_invariants_and_zero_target_queries(toy_classifier, second_classifier, toy_batch):
    images, labels, _ = toy_batch
    surrogate_state = model_state(toy_classifier)[0]
    transfer = TransferAttack(PGD(eps=EPS, steps=5, random_start=False), surrogate=toy_classifier)
    result = assert_invariants(transfer, second_classifier, images, labels, "linf", EPS)
    assert torch.equal(result.trace.queries, torch.zeros(len(images), dtype=torch.long))
    assert torch.equal(result.extras["surrogate_queries"], torch.zeros(len(images), dtype=torch.long))
    after = model_state(toy_classifier)[0]
    assert all(torch.equal(after[k], surrogate_state[k]) for k in after)


def test_transfer_crafts_on_the_surrogate_only(toy_classifier, second_classifier, toy_batch):
    images, labels, _ = toy_batch
    attack = PGD(eps=EPS, steps=5, random_start=False)
    crafted = attack(toy_classifier, images, labels).adv_images
    transfer = TransferAttack(attack, surrogate=toy_classifier)
    assert torch.equal(transfer(second_classifier, images, labels).adv_images, crafted)
    assert torch.equal(transfer(toy_classifier, images, labels).adv_images, crafted)


def test_transfer_passes_sample_ids_to_the_crafting_attack(toy_classifier, second_classifier, toy_batch):
    images, labels, _ = toy_batch
    ids = [str(i) for i in range(len(images))]
    attack = PGD(eps=EPS, steps=3)
    crafted = attack(toy_classifier, images, labels, ids=ids).adv_images
    transferred = TransferAttack(attack, surrogate=toy_classifier)(second_classifier, images, labels, ids=ids)
    assert torch.equal(transferred.adv_images, crafted)
    assert not torch.equal(crafted, attack(toy_classifier, images, labels).adv_images)


def test_transfer_lowers_an_independent_classifier_more_than_noise(
    toy_classifier, second_classifier, toy_batch
):
    images, labels, _ = toy_batch
    assert accuracy(second_classifier, images, labels) >= 0.9
    transfer = TransferAttack(PGD(eps=EPS, steps=10), surrogate=toy_classifier)
    adv = transfer(second_classifier, images, labels).adv_images
    transferred = accuracy(second_classifier, adv, labels)
    noisy = accuracy(second_classifier, sign_noise(images, EPS), labels)
    assert transferred <= noisy - 0.3


def test_ensemble_objective_averages_its_members(toy_classifier, second_classifier, toy_batch):
    images, labels, _ = toy_batch
    ensemble = EnsembleObjective([toy_classifier, second_classifier], weights=[3.0, 1.0])
    with torch.no_grad():
        outputs = ensemble.forward(images)
        first, second = toy_classifier.forward(images), second_classifier.forward(images)
    expected_loss = 0.75 * toy_classifier.loss(first, labels) + 0.25 * second_classifier.loss(second, labels)
    torch.testing.assert_close(ensemble.loss(outputs, labels), expected_loss)
    torch.testing.assert_close(ensemble.logits(outputs), 0.75 * first + 0.25 * second)
    assert torch.equal(ensemble.predict(outputs), (0.75 * first + 0.25 * second).argmax(dim=1))
    divergence = 0.75 * toy_classifier.divergence(first, first)
    divergence = divergence + 0.25 * second_classifier.divergence(second, second)
    torch.testing.assert_close(ensemble.divergence(outputs, outputs), divergence)
    assert torch.equal(ensemble.dense_target(outputs, labels), labels)


def test_ensemble_transfer_keeps_every_member_unchanged(toy_classifier, second_classifier, toy_batch):
    images, labels, _ = toy_batch
    ensemble = EnsembleObjective([toy_classifier, second_classifier])
    transfer = TransferAttack(PGD(eps=EPS, alpha=EPS / 4, steps=8, random_start=False), surrogate=ensemble)
    states = [model_state(objective)[0] for objective in (toy_classifier, second_classifier)]
    result = assert_invariants(transfer, second_classifier, images, labels, "linf", EPS)
    for objective, before in zip((toy_classifier, second_classifier), states, strict=True):
        after = model_state(objective)[0]
        assert all(torch.equal(after[k], before[k]) for k in after)
    assert accuracy(second_classifier, result.adv_images, labels) < 0.5  # white-box: the target is a member


@pytest.mark.parametrize(
    ("build", "argument"),
    [
        (lambda objective: EnsembleObjective([]), "objectives"),
        (lambda objective: EnsembleObjective([objective], weights=[1.0, 2.0]), "weights"),
        (lambda objective: EnsembleObjective([objective, objective], weights=[-1.0, 2.0]), "weights"),
        (lambda objective: EnsembleObjective([objective], weights=[0.0]), "weights"),
        (lambda objective: TransferAttack(object(), surrogate=objective), "attack"),
    ],
)
def test_transfer_constructors_reject_bad_arguments(build, argument, toy_classifier):
    with pytest.raises(ValueError, match=argument):
        build(toy_classifier)
