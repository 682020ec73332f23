"""The analysis views that depend on the model alone (loss landscape, clean Grad-CAM maps, clean features)
are computed once per model in a run and shared by all its attack cells."""

from __future__ import annotations

import numpy as np
import pytest
import yaml

import callbacks.analysis
from benchmarks.cli import main
from benchmarks.store import ResultsStore

pytestmark = pytest.mark.slow

CONFIG = {
    "name": "views",
    "seeds": [0],
    "evaluation": {"examples": 0, "brisque": False, "analysis": {"samples": 2, "points": 3, "features": 4}},
    "overrides": {"trainer.max_epochs": 1, "trainer.limit_train_batches": 2, "data.init_args.num_samples": 40,
                  "data.init_args.size": 32},
    "datasets": {"fundus": {"train": "synthetic_fundus",
                            "attacks": {"fgsm": {"budgets": ["2/255", "8/255"]}, "bim": {"budgets": ["8/255"],
                                                                                       "settings": {"steps": 2}}}}},
}


def test_landscape_is_computed_once_per_model_and_stored_with_every_cell(tmp_path, monkeypatch):
    calls = []
    landscape = callbacks.analysis.loss_landscape

    def counted(*args, **kwargs):
        calls.append(args[1].shape)
        return landscape(*args, **kwargs)

    monkeypatch.setattr(callbacks.analysis, "loss_landscape", counted)
    config = tmp_path / "views.yaml"
    config.write_text(yaml.safe_dump(CONFIG))
    assert main(["run", "--config", str(config), "--output", str(tmp_path), "--no-report"]) == 0
    with ResultsStore(tmp_path / "results.db") as store:
        records = store.records()
        arrays = [store.arrays(record.key) for record in records]
    assert len(records) == 3 and len(calls) == 1
    losses = [cell["landscape/losses"] for cell in arrays]
    assert all(np.array_equal(losses[0], other) for other in losses[1:])
    maps = [cell["attribution/adversarial"] for cell in arrays]
    assert not np.array_equal(maps[0], maps[1])  # the attack's own views are still per cell
