"""Square's bookkeeping: each iteration proposes for and queries the samples not done yet only, a caller's
promise of unfooled samples saves the clean query's forward pass, and neither changes a result."""

import pytest
import torch

from attacks.base import SampleRandom
from attacks.square import SquareAttack
from tests.attacks.test_gradient import CountingObjective, assert_same_result, correctly_classified, promising_unfooled
from tests.attacks.toys import blob_images

EPS = 16 / 255  # fools about half of the toy batch within 100 queries


def test_subset_draws_are_those_of_the_same_samples_in_the_batch_and_advance_no_other():
    ids = ["a", "b", "c", "d"]
    rows = torch.tensor([1, 3])
    random = SampleRandom(7, 4, ids=ids)
    reference = SampleRandom(7, 4, ids=ids)
    first, second = reference.shared(torch.rand, (2,)), reference.shared(torch.rand, (2,))
    assert torch.equal(random.subset(rows).shared(torch.rand, (2,)), first[rows])
    # the next draw of the whole batch: b and d draw their second values, a and c (not advanced) their first
    expected = torch.stack([first[0], second[1], first[2], second[3]])
    assert torch.equal(random.shared(torch.rand, (2,)), expected)


def test_subset_without_ids_shares_the_batch_generator():
    random, reference = SampleRandom(7, 4), SampleRandom(7, 4)
    subset = random.subset(torch.tensor([0, 2]))
    assert torch.equal(subset.shared(torch.rand, (3,)), reference.shared(torch.rand, (3,)))
    assert subset.draw(torch.rand, (3,)).shape == (2, 3)


@pytest.mark.parametrize("with_ids", [True, False], ids=["ids", "shared_draws"])
def test_a_promise_of_unfooled_samples_saves_the_clean_forward_and_changes_no_bit(with_ids, toy_classifier):
    images, labels, ids = correctly_classified(toy_classifier, *blob_images(32, torch.Generator().manual_seed(5))[:2])
    ids = ids if with_ids else None
    attack = SquareAttack(eps=EPS, max_queries=100, p_init=0.3)
    checking, trusting = CountingObjective(toy_classifier), CountingObjective(toy_classifier)
    checked = attack(checking, images, labels, ids=ids)
    trusted = promising_unfooled(attack)(trusting, images, labels, ids=ids)
    done = checked.trace.queries < 100
    assert done.any() and not done.all()  # some samples stop early, some spend the budget
    assert_same_result(checked, trusted)  # the clean query still counts: the caller made it for the attack
    assert checking.sizes[0] == len(images) and trusting.sizes == checking.sizes[1:]


def test_each_iteration_queries_only_the_samples_not_done(toy_classifier):
    images, labels, ids = correctly_classified(toy_classifier, *blob_images(32, torch.Generator().manual_seed(5))[:2])
    counting = CountingObjective(toy_classifier)
    result = SquareAttack(eps=EPS, max_queries=100, p_init=0.3)(counting, images, labels, ids=ids)
    # every model query is one forwarded image: the clean check and each iteration's candidates of the active rows
    assert sum(counting.sizes) == result.trace.queries.sum().item()
    assert counting.sizes == sorted(counting.sizes, reverse=True) and counting.sizes[-1] < len(images)
