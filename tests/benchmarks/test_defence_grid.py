"""Defences and adaptive attacks in benchmark configs: a model's ``defence``, an attack's ``adaptive`` and
``models``, a detection study's ``models``; what cells store; named errors; the shipped ``defences`` suite."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import yaml
from torch import nn

from attacks.adaptive import AdaptiveAttack
from benchmarks.grid import load_benchmark, read_benchmark, resolve_config
from benchmarks.problems import ConfigError
from benchmarks.validation import benchmark_problems, validate_benchmark
from lightning_modules.defences import InputDefence
from tests.realdata import require_shared

MODELS = {"plain": {}, "trades": {"model.init_args.adversarial_training": {"method": "trades", "eps": "4/255"}},
          "jpeg": {"defence": {"name": "jpeg", "quality": 50}}, "noisy": {"defence": "gaussian_noise"}}
ATTACKS = {
    "pgd": {"budgets": ["4/255"], "settings": {"steps": 2}},
    "pgd-bpda": {"attack": "pgd", "budgets": ["4/255"], "adaptive": "bpda", "models": ["jpeg"]},
    "pgd-eot": {"attack": "pgd", "budgets": ["4/255"], "adaptive": {"method": "eot", "draws": 3}, "models": ["noisy"]},
}


def config(tmp_path: Path, **dataset) -> Path:
    entry = {"train": "synthetic_fundus", "models": MODELS, "attacks": ATTACKS, **dataset}
    path = tmp_path / "bench.yaml"
    path.write_text(yaml.safe_dump({"name": "b", "datasets": {"fundus": entry}}))
    return path


def test_defences_and_adaptive_attacks_expand_into_cells_that_record_them(tmp_path):
    detection = {"attacks": {"pgd": {}}, "budgets": ["4/255"], "models": ["plain"]}
    cells = {cell.key.split("/", 2)[2]: cell for cell in load_benchmark(config(tmp_path, detection=detection)).cells}
    assert sorted(cells) == sorted(
        [f"{model}/pgd/4_255/seed0" for model in MODELS]
        + ["jpeg/pgd-bpda/4_255/seed0", "noisy/pgd-eot/4_255/seed0", "plain/detection/4_255/seed0"]
    )
    jpeg = cells["jpeg/pgd-bpda/4_255/seed0"].settings()
    assert jpeg["models"]["jpeg"]["defence"] == {"name": "jpeg", "quality": 50}
    assert jpeg["attacks"][0]["settings"]["adaptive"] == "bpda"
    eot = cells["noisy/pgd-eot/4_255/seed0"]
    recorded = eot.settings()["attacks"][0]["settings"]
    assert recorded["adaptive"] == "eot" and recorded["draws"] == 3 and recorded["steps"] == 10
    assert isinstance(eot.attacks[0].build(0), AdaptiveAttack)
    assert "trades" in str(cells["trades/pgd/4_255/seed0"].settings()["models"])
    assert "defence" not in cells["plain/pgd/4_255/seed0"].settings()["models"]["plain"]
    # a defence is applied after training: the defended variants share the undefended checkpoint
    specs = {cell.model: cell.models[0] for cell in cells.values()}
    assert specs["jpeg"].digest == specs["plain"].digest != specs["trades"].digest


def test_a_defended_spec_evaluates_its_network_behind_the_transform(tmp_path):
    specs = {cell.model: cell.models[0] for cell in load_benchmark(config(tmp_path)).cells}
    network = nn.Identity()
    defended = specs["jpeg"].evaluated(network)
    assert isinstance(defended, InputDefence) and defended.network is network
    assert defended.transform.quality == 50
    assert specs["plain"].evaluated(network) is network


@pytest.mark.parametrize(
    ("models", "attacks", "key", "fragment"),
    [
        ({"jpeg": {"defence": "jpg"}}, {}, "models.jpeg.defence", "unknown defence 'jpg'"),
        ({"jpeg": {"defence": {"name": "jpeg", "quality": 101}}}, {}, "models.jpeg.defence", "quality"),
        ({"jpeg": {"defence": {"name": "jpeg", "bits": 3}}}, {}, "models.jpeg.defence", "do not fit"),
        ({}, {"pgd-bpda": {"adaptive": "bdpa"}}, "attacks.pgd-bpda.adaptive", "must be one of"),
        ({}, {"pgd-bpda": {"adaptive": {"method": "bpda", "draws": 4}}}, "attacks.pgd-bpda.adaptive", "takes none"),
        ({}, {"pgd-eot": {"adaptive": {"method": "eot", "draws": 0}}}, "attacks.pgd-eot.adaptive", ">= 1"),
        ({}, {"pgd-bpda": {"models": ["jpeg", "plain"]}}, "attacks.pgd-bpda.adaptive", "['plain'] have no 'defence'"),
        ({}, {"pgd-eot": {"models": ["nosy"]}}, "attacks.pgd-eot.models", "unknown models ['nosy']"),
    ],
)
def test_bad_defence_and_adaptive_entries_are_named_problems(tmp_path, models, attacks, key, fragment):
    merged_attacks = {name: {**entry, **attacks.get(name, {})} for name, entry in ATTACKS.items()}
    entry = {"train": "synthetic_fundus", "models": {**MODELS, **models}, "attacks": merged_attacks}
    path = tmp_path / "bench.yaml"
    path.write_text(yaml.safe_dump({"name": "b", "datasets": {"fundus": entry}}))
    _, problems = read_benchmark(path)
    assert [problem.key for problem in problems] == [f"datasets.fundus.{key}"]
    assert fragment in problems[0].message


def test_only_the_datasets_attacks_choose_models(tmp_path):
    transfer = {"attacks": {"pgd": {"models": ["plain"]}}, "budgets": ["4/255"]}
    _, problems = read_benchmark(config(tmp_path, transfer=transfer))
    assert [problem.key for problem in problems] == ["datasets.fundus.transfer.attacks.pgd.models"]


def test_the_defences_suite_validates_in_its_reduced_profile():
    """The shipped suite as ``medadv run --dry-run`` checks it: every value and attack, the detection
    callbacks, and (the costly part, so for one adversarially trained model) the train config with the
    suite's overrides (an adversarial_training mapping as JSON) and the real data files."""
    require_shared("medmnist/pneumoniamnist.npz")
    require_shared("medmnist/retinamnist.npz")
    path = resolve_config("defences")
    benchmark, problems = read_benchmark(path, ["reduced"])
    trained = [spec for spec in benchmark.models if spec.label == "trades" and spec.dataset == "pneumoniamnist"]
    problems += benchmark_problems(replace(benchmark, models=tuple(trained)))
    if any("does not exist" in problem.message for problem in problems):
        pytest.skip("the train configs read ../shared/data relative to the repository root, which lacks it")
    assert problems == []
    cells = benchmark.cells
    assert {cell.dataset for cell in cells} == {"pneumoniamnist", "retinamnist"}
    assert {"undefended", "pgd_at", "trades", "fast_at", "jpeg", "bit_depth", "median", "resize_pad",
            "gaussian_noise"} == {cell.model for cell in cells}
    adaptive = {setting.adaptive["method"] for cell in cells for setting in cell.attacks if setting.adaptive}
    assert adaptive == {"bpda", "eot"}
    detection = [cell for cell in cells if cell.kind == "detection"]
    assert len(detection) == 2 and all(cell.study["adaptive_weight"] > 0 for cell in detection)


def test_a_defence_in_front_of_a_detector_is_a_named_problem(tmp_path):
    entry = {"train": "synthetic_endoscopy", "overrides": {"data.init_args.num_samples": 8},
             "models": {"jpeg": {"defence": "jpeg"}}, "attacks": {"fgsm": {"budgets": [0.01]}}}
    path = tmp_path / "bench.yaml"
    path.write_text(yaml.safe_dump({"name": "b", "datasets": {"frames": entry}}))
    with pytest.raises(ConfigError) as error:
        validate_benchmark(path)
    (problem,) = error.value.problems
    assert problem.key == "datasets.frames.models.jpeg.defence" and "DetectorModule" in problem.message
