"""CompiledObjective: torch.compile of the forward that attacks run, equal to eager, with an eager fallback and
one warning when compilation fails."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
from torch import Tensor

from attacks.base import input_gradient
from attacks.compiled import CompiledObjective
from attacks.gradient import PGD
from attacks.precision import with_precision
from lightning_modules.objectives import ClassificationObjective
from tests.attacks.toys import blob_images

EPS = 4 / 255


def failing_backend(graph: torch.fx.GraphModule, example_inputs: list[Tensor]) -> None:
    raise RuntimeError("no compiler here")


def sample_ids(count: int) -> list[str]:
    return [f"blob-{i}" for i in range(count)]


def test_a_failing_compile_runs_eagerly_with_one_warning(toy_classifier):
    images, labels, _ = blob_images(8, torch.Generator().manual_seed(1))
    compiled = CompiledObjective(toy_classifier, backend=failing_backend)
    attack = PGD(eps=EPS, steps=3, random_start=True)
    with pytest.warns(RuntimeWarning, match="torch.compile failed.*no compiler here") as record:
        result = attack(compiled, images, labels, ids=sample_ids(8))
    assert sum("torch.compile" in str(warning.message) for warning in record) == 1
    assert "no compiler here" in compiled.failure
    eager = attack(toy_classifier, images, labels, ids=sample_ids(8))
    assert torch.equal(result.adv_images, eager.adv_images)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no second warning: later calls go straight to eager
        assert torch.equal(attack(compiled, images, labels, ids=sample_ids(8)).adv_images, eager.adv_images)


class BrokenObjective:
    """An objective whose model fails eagerly too: its error must surface, not a compile warning."""

    model = torch.nn.Identity()

    def forward(self, images: Tensor) -> Tensor:
        raise ValueError(f"images of shape {tuple(images.shape)} do not fit this model")


def test_an_error_of_the_model_itself_is_raised_not_hidden_behind_the_fallback():
    compiled = CompiledObjective(BrokenObjective(), backend=failing_backend)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(ValueError, match="do not fit this model"):
            compiled.forward(torch.rand(1, 3, 4, 4))
    assert compiled.failure is None


@pytest.mark.slow
def test_inductor_compiled_attacks_equal_eager_ones_on_cpu(toy_classifier):
    """torch.compile with the default inductor backend works on this CPU (gcc present): outputs and input
    gradients agree with eager to float rounding, and PGD's result too (a sign step may flip only where a
    gradient entry is ~0), in fp32 and under bf16 autocast around the compiled forward."""
    images, labels, _ = blob_images(16, torch.Generator().manual_seed(2))
    attack = PGD(eps=EPS, steps=5, random_start=True)
    for precision, tolerance in (("32", 1e-4), ("bf16-mixed", 2e-2)):
        compiled_forward = CompiledObjective(toy_classifier)
        compiled, eager = with_precision(compiled_forward, precision), with_precision(toy_classifier, precision)
        gradient, loss = input_gradient(compiled, images, labels)
        result = attack(compiled, images, labels, ids=sample_ids(16))
        assert compiled_forward.failure is None, compiled_forward.failure
        reference_gradient, reference_loss = input_gradient(eager, images, labels)
        assert torch.allclose(loss, reference_loss, rtol=tolerance, atol=tolerance), precision
        cosines = torch.nn.functional.cosine_similarity(gradient.flatten(1), reference_gradient.flatten(1))
        assert cosines.min() > 0.99, precision
        differs = (result.adv_images - attack(eager, images, labels, ids=sample_ids(16)).adv_images).abs() > 1e-5
        assert differs.float().mean() < 0.01, precision


@pytest.mark.gpu
def test_inductor_compiled_attacks_equal_eager_ones_on_cuda(toy_classifier):
    objective = ClassificationObjective(copy.deepcopy(toy_classifier.model).cuda())
    images, labels, _ = blob_images(64, torch.Generator().manual_seed(2))
    images, labels = images.cuda(), labels.cuda()
    compiled = CompiledObjective(objective)
    attack = PGD(eps=EPS, steps=5, random_start=True)
    result = attack(compiled, images, labels, ids=sample_ids(64))
    assert compiled.failure is None, compiled.failure
    differs = (result.adv_images - attack(objective, images, labels, ids=sample_ids(64)).adv_images).abs() > 1e-5
    assert differs.float().mean() < 0.01
