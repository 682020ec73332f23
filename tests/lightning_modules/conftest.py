"""Task models fitted once per test session on the synthetic datamodules (see ``trained.py``)."""

import pytest

from tests.lightning_modules import trained


@pytest.fixture(scope="session")
def fitted_classifier():
    return trained.fit_classifier()


@pytest.fixture(scope="session")
def fitted_segmenter():
    return trained.fit_segmenter()


@pytest.fixture(scope="session")
def fitted_detector():
    return trained.fit_detector()
