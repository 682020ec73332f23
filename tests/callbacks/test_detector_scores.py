"""Fitted detectors as torch functions: equal to scikit-learn's decision functions, with input gradients
(straight through QFeat's quantisation), and a surrogate where a detector has none (DFeat's forest)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from callbacks.detector_features import DETECTORS
from callbacks.detector_scores import differentiable, surrogate, torch_score


def features(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = np.concatenate([rng.normal(0.0, 1.0, (40, 5)), rng.normal(0.7, 1.0, (40, 5))])
    return x, np.repeat([0, 1], 40)


@pytest.mark.parametrize("name", ["kd", "lid", "qfeat"])
def test_torch_score_is_the_pipelines_decision_function(name: str) -> None:
    x, y = features()
    pipeline = DETECTORS[name].build(0, 4).fit(x, y)
    queries = np.concatenate([x, x + 3.0])  # also outside the fitted range, where QFeat's scaler clips
    scores = torch_score(pipeline)(torch.tensor(queries))
    assert differentiable(pipeline)
    np.testing.assert_allclose(scores.numpy(), pipeline.decision_function(queries), atol=1e-9)


def test_quantisation_passes_the_gradient_straight_through() -> None:
    x, y = features()
    pipeline = DETECTORS["qfeat"].build(0, 4).fit(x, y)
    scaler, svm = pipeline.steps[0][1], pipeline.steps[2][1]
    inside = torch.tensor(x[:3] * 0.1, requires_grad=True)  # inside the scaler's range: no clipping
    (gradient,) = torch.autograd.grad(torch_score(pipeline)(inside).sum(), inside)
    quantised = torch.tensor(np.round(scaler.transform(x[:3] * 0.1) * 3) / 3)
    support = torch.tensor(svm.support_vectors_)
    kernel = torch.exp(-svm._gamma * torch.cdist(quantised, support).square())
    # d/dq of sum_i a_i exp(-gamma ||q - s_i||^2), times the scaler's slope
    expected = (-2 * svm._gamma * (kernel * torch.tensor(svm.dual_coef_[0]))[:, :, None]
                * (quantised[:, None, :] - support[None])).sum(1) * torch.tensor(scaler.scale_)
    torch.testing.assert_close(gradient, expected)


def test_a_forest_has_no_torch_version_and_gets_a_logistic_surrogate() -> None:
    x, y = features()
    forest = DETECTORS["dfeat"].build(0, 4).fit(x, y)
    assert not differentiable(forest)
    with pytest.raises(ValueError, match="RandomForestClassifier"):
        torch_score(forest)
    stand_in = surrogate(x, y)
    assert differentiable(stand_in) and stand_in.score(x, y) > 0.6
