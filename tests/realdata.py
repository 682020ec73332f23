"""Locating the real data sets in tests: skip with a clear reason when they are absent."""

from __future__ import annotations

from pathlib import Path

import pytest

from datamodules.paths import DATA_DIR_VARIABLE, shared_data_dir


def require_shared(relative_path: str) -> Path:
    """``shared_data_dir() / relative_path``, or skip the test saying what is missing and where."""
    root = shared_data_dir()
    if root is None:
        pytest.skip(f"real data not found: set ${DATA_DIR_VARIABLE} or provide ../shared/data")
    path = root / relative_path
    if not path.exists():
        pytest.skip(f"real data set missing: {path}")
    return path
