"""Test-session set-up shared by every test package."""

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import pytest  # noqa: E402
import torch  # noqa: E402

from tests.shared_fits import fitted_once  # noqa: E402

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
# Two threads in every process, pytest-xdist workers included: fitted test models depend on the thread
# count through CPU rounding, so they stay the same whether the suite runs on one worker or several.
torch.set_num_threads(min(2, os.cpu_count() or 1))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked ``gpu`` skip, with the reason, where CUDA is not available."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA (benchmarks/gpu_check.sh runs it on a GPU machine)")
    for item in items:
        if item.get_closest_marker("gpu") is not None:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _seeded() -> None:
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def fitted_classifier(tmp_path_factory: pytest.TempPathFactory):
    """(ClassifierModule, SyntheticFundusDataModule) trained once per test run."""
    from tests.lightning_modules.trained import fit_classifier

    return fitted_once(tmp_path_factory, "fitted_classifier", fit_classifier)


@pytest.fixture(scope="session")
def fitted_segmenter(tmp_path_factory: pytest.TempPathFactory):
    """(SegmenterModule, SyntheticLungCTDataModule) trained once per test run."""
    from tests.lightning_modules.trained import fit_segmenter

    return fitted_once(tmp_path_factory, "fitted_segmenter", fit_segmenter)


@pytest.fixture(scope="session")
def fitted_detector(tmp_path_factory: pytest.TempPathFactory):
    """(DetectorModule, SyntheticEndoscopyDataModule) trained once per test run."""
    from tests.lightning_modules.trained import fit_detector

    return fitted_once(tmp_path_factory, "fitted_detector", fit_detector)
