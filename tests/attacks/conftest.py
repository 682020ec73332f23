"""Fixtures for attack tests: tiny models trained once per test session, and held-out batches."""

import pytest
import torch

from tests.attacks.toys import blob_images, trained_classifier, trained_segmenter
from tests.shared_fits import fitted_once


@pytest.fixture(scope="session")
def toy_classifier(tmp_path_factory: pytest.TempPathFactory):
    return fitted_once(tmp_path_factory, "toy_classifier", trained_classifier)


@pytest.fixture(scope="session")
def toy_segmenter(tmp_path_factory: pytest.TempPathFactory):
    return fitted_once(tmp_path_factory, "toy_segmenter", trained_segmenter)


@pytest.fixture()
def toy_batch():
    """Held-out batch (images, labels, masks) of 32 blob images."""
    return blob_images(32, torch.Generator().manual_seed(123))
