"""Models fitted once per test run, shared by the pytest-xdist workers of ``make test``."""

import os
from collections.abc import Callable
from typing import Any

import pytest
import torch
from filelock import FileLock


def fitted_once(tmp_path_factory: pytest.TempPathFactory, name: str, fit: Callable[[], Any]) -> Any:
    """``fit()`` once per test run: under pytest-xdist the first worker fits and saves, the others load.

    Fits are seeded, so a loaded model equals the one each worker would have fitted itself."""
    if "PYTEST_XDIST_WORKER" not in os.environ:
        return fit()
    path = tmp_path_factory.getbasetemp().parent / f"{name}.pt"
    with FileLock(f"{path}.lock"):
        if path.is_file():
            return torch.load(path, weights_only=False)
        fitted = fit()
        torch.save(fitted, path)
        return fitted
