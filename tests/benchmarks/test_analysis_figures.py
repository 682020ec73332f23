"""The analysis arrays survive the store (and a merge), and the report draws each model's landscape from
them, comparing models only where a dataset has several."""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from benchmarks.analysis_figures import landscape_comparison, model_analysis, model_landscapes
from benchmarks.store import ResultsStore
from tests.benchmarks.report_store import analysis_arrays, cell


def fundus_cell(model: str, attack: str):
    return cell("attack", "synthetic_fundus", model, attack, "8_255", 0, {"adv/cam_rank_corr": 0.5}, "classification")


def test_arrays_round_trip_through_the_store_and_a_merge(tmp_path):
    record, arrays = fundus_cell("resnet18", "pgd"), analysis_arrays(0, features=True)
    with ResultsStore(tmp_path / "one.sqlite") as store:
        store.start(record)
        store.finish(replace(record, finished_at=3.0), arrays=arrays)
    with ResultsStore(tmp_path / "all.sqlite") as merged:
        assert merged.merge([tmp_path / "one.sqlite"]) == 1
        stored = merged.arrays(record.key)
    assert stored.keys() == arrays.keys()
    assert all(np.array_equal(stored[name], value) and stored[name].dtype == value.dtype
               for name, value in arrays.items())


def test_each_model_gets_its_landscape_and_several_models_are_compared():
    records = [fundus_cell("resnet18", "pgd"), fundus_cell("resnet18", "fgsm"), fundus_cell("resnet18_at", "pgd")]
    arrays = {r.key: analysis_arrays(i, features=True) for i, r in enumerate(records)}
    arrays[records[2].key]["landscape/losses"] = arrays[records[2].key]["landscape/losses"] / 10  # flatter
    landscapes = model_landscapes(records, arrays.__getitem__)
    assert list(landscapes) == ["resnet18", "resnet18_at"]
    assert np.array_equal(landscapes["resnet18"].losses.numpy(), arrays[records[0].key]["landscape/losses"])
    assert landscapes["resnet18_at"].sharpness() < landscapes["resnet18"].sharpness()
    assert [image.title.endswith("models compared") for image in landscape_comparison(records, arrays.__getitem__)] \
        == [True, True]
    assert landscape_comparison(records[:2], arrays.__getitem__) == []
    without_arrays = model_analysis(records[:2], lambda key: {})  # only the shift bars, from the metrics
    assert [image.title for image in without_arrays] == ["Attribution shift per attack"]
