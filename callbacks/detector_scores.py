"""Fitted detectors as differentiable torch functions, for attacks that evade them (Carlini & Wagner, AISec
2017, Sec. 5): each scikit-learn step of a detector pipeline becomes the same computation in torch, so
s(x) = detector(features(x)) has an input gradient. Quantisation (QFeat) passes the gradient straight
through (BPDA, Athalye et al. 2018, Sec. 4.1). A random forest (DFeat) has no gradient: the attack uses a
logistic-regression surrogate fitted on the same AdvTrain features (``surrogate``)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from sklearn.base import BaseEstimator
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import FunctionTransformer, MinMaxScaler
from sklearn.svm import SVC
from torch import Tensor

from callbacks.detector_features import quantise

Step = Callable[[Tensor], Tensor]


def as_tensor(values: np.ndarray, like: Tensor) -> Tensor:
    return torch.as_tensor(np.asarray(values), dtype=like.dtype, device=like.device)


def min_max(scaler: MinMaxScaler) -> Step:
    """x * scale + min, clipped to [0, 1] when the scaler clips."""

    def step(x: Tensor) -> Tensor:
        scaled = x * as_tensor(scaler.scale_, x) + as_tensor(scaler.min_, x)
        return scaled.clamp(0, 1) if scaler.clip else scaled

    return step


def straight_through_quantise(transformer: FunctionTransformer) -> Step:
    """QFeat's rounding to evenly spaced levels forward, the identity backward."""
    if transformer.func is not quantise:
        raise ValueError(f"no torch version of the feature transform {transformer.func!r}")
    top = (transformer.kw_args or {})["levels"] - 1

    def step(x: Tensor) -> Tensor:
        return x + ((x * top).round() / top - x).detach()

    return step


def logistic(model: LogisticRegression) -> Step:
    """The decision function w . x + b of a two-class logistic regression (its log-odds)."""
    return lambda x: x @ as_tensor(model.coef_[0], x) + as_tensor(model.intercept_, x)[0]


def rbf_svm(model: SVC) -> Step:
    """The decision function sum_i a_i exp(-gamma ||x - s_i||^2) + b of a two-class RBF SVM."""
    if model.kernel != "rbf":
        raise ValueError(f"no torch version of the SVM kernel {model.kernel!r}")

    def step(x: Tensor) -> Tensor:
        kernel = torch.exp(-model._gamma * torch.cdist(x, as_tensor(model.support_vectors_, x)).square())
        return kernel @ as_tensor(model.dual_coef_[0], x) + as_tensor(model.intercept_, x)[0]

    return step


STEPS: dict[type, Callable[[BaseEstimator], Step]] = {
    MinMaxScaler: min_max,
    FunctionTransformer: straight_through_quantise,
    LogisticRegression: logistic,
    SVC: rbf_svm,
}


def differentiable(pipeline: Pipeline) -> bool:
    """Whether every step of ``pipeline`` has a torch version."""
    return all(type(step) in STEPS for _, step in pipeline.steps)


def torch_score(pipeline: Pipeline) -> Step:
    """The fitted ``pipeline``'s decision function on (n, F) features as a torch function (higher: more
    adversarial), equal to ``pipeline.decision_function`` up to rounding."""
    unknown = [type(step).__name__ for _, step in pipeline.steps if type(step) not in STEPS]
    if unknown:
        raise ValueError(f"no torch version of {unknown}; fit a differentiable surrogate")
    steps = [STEPS[type(step)](step) for _, step in pipeline.steps]

    def score(x: Tensor) -> Tensor:
        for step in steps:
            x = step(x)
        return x

    return score


def surrogate(x: np.ndarray, y: np.ndarray) -> Pipeline:
    """A differentiable stand-in for a detector without a gradient: min-max scaling and logistic regression
    fitted on the same features and labels."""
    return make_pipeline(MinMaxScaler(), LogisticRegression(max_iter=1000)).fit(x, y)
