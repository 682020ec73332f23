"""The attack protocol's helpers: the trace recorder against its plain formulas, and per-sample randomness."""

from functools import partial

import pytest
import torch
from torch import nn

from attacks.base import SampleRandom, TraceRecorder, sample_seed


def plain_trace(perturbations):
    """Var and Cos written out with torch's own reductions, as the recorder computed them at first."""
    previous = torch.zeros_like(perturbations[0])
    updates = []
    for perturbation in perturbations:
        updates.append((perturbation - previous).flatten(1))
        previous = perturbation
    variances = torch.stack([update.var(dim=1, unbiased=False) for update in updates], dim=1)
    pairs = zip(updates[1:], updates[:-1], strict=True)
    cosines = torch.stack([nn.functional.cosine_similarity(b, a, dim=1, eps=1e-12) for b, a in pairs], dim=1)
    return perturbations[-1].flatten(1).var(dim=1, unbiased=False), variances, cosines


def test_trace_recorder_matches_the_plain_formulas():
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(6, 3, 16, 16, generator=generator)
    perturbations = [0.03 * torch.randn(6, 3, 16, 16, generator=generator) for _ in range(5)]
    perturbations.insert(2, perturbations[1].clone())  # a step that updates nothing
    perturbations[4][0] = perturbations[3][0] + 0.01  # a constant update: variance 0
    recorder = TraceRecorder(images)
    active = torch.tensor([True, True, False, True, False, True])
    for perturbation in perturbations:
        recorder.step(perturbation, active)
    trace = recorder.finish(perturbations[-1])
    variance, update_variance, update_cosine = plain_trace(perturbations)
    torch.testing.assert_close(trace.variance, variance, rtol=1e-5, atol=1e-10)
    torch.testing.assert_close(trace.update_variance, update_variance, rtol=1e-5, atol=1e-10)
    inactive = update_cosine.masked_fill(~active[:, None], float("nan"))  # samples not updated have no cosine
    torch.testing.assert_close(trace.update_cosine, inactive, rtol=1e-5, atol=1e-6, equal_nan=True)
    assert torch.equal(trace.iterations, active.long() * len(perturbations))


def test_sample_random_draws_depend_on_the_id_only():
    ids = ["scan-7", "scan-3", "scan-9"]
    uniform = SampleRandom(5, 3, ids=ids).draw(torch.rand, (2, 4))
    assert uniform.shape == (3, 2, 4)
    assert torch.equal(SampleRandom(5, 1, ids=ids[1:2]).draw(torch.rand, (2, 4)), uniform[1:2])
    assert torch.equal(SampleRandom(5, 3, ids=ids[::-1]).draw(torch.rand, (2, 4)), uniform.flip(0))
    assert not torch.equal(SampleRandom(6, 3, ids=ids).draw(torch.rand, (2, 4)), uniform)
    integers = partial(torch.randint, 0, 100)
    shared = SampleRandom(5, 3, ids=ids).shared(integers, ())
    assert shared.shape == (3,) and torch.equal(SampleRandom(5, 1, ids=ids[2:]).shared(integers, ()), shared[2:])


def test_sample_random_without_ids_is_one_generator_for_the_batch():
    random = SampleRandom(5, 3)
    expected = torch.Generator().manual_seed(5)
    assert torch.equal(random.draw(torch.rand, (2,)), torch.rand(3, 2, generator=expected))
    assert torch.equal(random.shared(torch.rand, (2,)), torch.rand(1, 2, generator=expected))
    permutations = random.each(lambda generator, device: torch.randperm(4, generator=generator, device=device))
    assert torch.equal(permutations, torch.stack([torch.randperm(4, generator=expected) for _ in range(3)]))


def test_sample_seed_is_a_stable_63_bit_hash():
    assert sample_seed(0, "a") == sample_seed(0, "a") != sample_seed(1, "a")
    assert sample_seed(0, "a") != sample_seed(0, "b")
    assert 0 <= sample_seed(123, "patient/42") < 2**63
    # fixed by SHA-256, so the same in every process (Python's str hash is salted per process)
    assert sample_seed(0, "a") == 0x6990B5C6E3E23244


def test_sample_random_rejects_ids_of_the_wrong_length():
    with pytest.raises(ValueError, match="ids"):
        SampleRandom(0, 3, ids=["a", "b"])


def test_cosines_exist_only_between_two_updates_of_the_same_sample():
    """A sample not updated at a step gets no cosine there (NaN), so its Cos does not depend on how long the
    other samples of its batch kept running."""
    steps = [torch.rand(3, 2, 4, 4, generator=torch.Generator().manual_seed(t)) for t in range(4)]
    alone = TraceRecorder(steps[0][:1])
    together = TraceRecorder(steps[0])
    for t, perturbation in enumerate(steps):
        if t < 2:
            alone.step(perturbation[:1])
        together.step(perturbation, torch.tensor([t < 2, True, t < 3]))
    cosines = together.finish(steps[-1]).update_cosine
    assert cosines.shape == (3, 3)
    torch.testing.assert_close(cosines[0, :1], alone.finish(steps[1][:1]).update_cosine[0])
    assert cosines[0, 1:].isnan().all() and not cosines[1].isnan().any() and cosines[2].isnan().tolist() == [
        False, False, True]
