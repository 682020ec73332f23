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
    torch.testing.assert_close(trace.update_cosine, update_cosine, rtol=1e-5, atol=1e-6)
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
