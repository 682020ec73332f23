"""Where the real data sets live: ``$MEDADV_DATA_DIR`` or the repository's sibling ``../shared/data``."""

from __future__ import annotations

import os
from pathlib import Path

DATA_DIR_VARIABLE = "MEDADV_DATA_DIR"


def shared_data_dir() -> Path | None:
    """The real-data root: ``$MEDADV_DATA_DIR`` if set, else ``<repo>/../shared/data`` if it exists."""
    override = os.environ.get(DATA_DIR_VARIABLE)
    if override:
        return Path(override).expanduser()
    sibling = Path(__file__).resolve().parent.parent.parent / "shared" / "data"
    return sibling if sibling.is_dir() else None
