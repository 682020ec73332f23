"""Benchmark configs: grid expansion, budgets, profiles, validation errors naming the key, shards."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from attacks.budgets import parse_budget
from benchmarks.grid import CONFIG_DIR, deep_merge, load_benchmark, resolve_config, select_shard

TINY = Path(__file__).parent / "configs" / "tiny.yaml"


def write_config(tmp_path: Path, config: dict) -> Path:
    path = tmp_path / "bench.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def minimal(**dataset) -> dict:
    return {"name": "b", "datasets": {"fundus": {"train": "synthetic_fundus", **dataset}}}


def test_budgets_parse_fractions_numbers_and_min():
    assert parse_budget("8/255", "x") == pytest.approx(8 / 255)
    assert parse_budget("0.2/255", "x") == pytest.approx(0.2 / 255)
    assert parse_budget(0.05, "x") == 0.05
    assert parse_budget(None, "x") is None and parse_budget("min", "x") is None
    with pytest.raises(ValueError, match="here: budget 'eight'"):
        parse_budget("eight", "here")
    with pytest.raises(ValueError, match="here: budget '1/0'"):
        parse_budget("1/0", "here")
    with pytest.raises(ValueError, match=">= 0"):
        parse_budget(-1, "here")


def test_tiny_grid_expands_models_attacks_budgets_and_studies():
    benchmark = load_benchmark(TINY)
    keys = [cell.key for cell in benchmark.cells]
    assert len(keys) == len(set(keys))
    attack_cells = [cell for cell in benchmark.cells if cell.kind == "attack"]
    assert len(attack_cells) == 2 * (2 + 1 + 1)  # 2 models x (fgsm at 2 budgets, bim, deepfool)
    assert "tiny/fundus/resnet18/fgsm/8_255/seed0" in keys
    assert "tiny/fundus/resnet10t/deepfool/min/seed0" in keys
    (transfer,) = [cell for cell in benchmark.cells if cell.kind == "transfer"]
    assert [spec.label for spec in transfer.models] == ["resnet18", "resnet10t"]
    detection = [cell for cell in benchmark.cells if cell.kind == "detection"]
    assert [len(cell.attacks) for cell in detection] == [2, 2]
    assert all(setting.budget == pytest.approx(8 / 255) for cell in detection for setting in cell.attacks)


def test_config_hash_follows_settings_but_not_other_cells(tmp_path):
    base = minimal(attacks={"fgsm": {"budgets": [0.01]}, "pgd": {"budgets": [0.01]}})
    changed = minimal(attacks={"fgsm": {"budgets": [0.01]}, "pgd": {"budgets": [0.01], "settings": {"steps": 3}}})
    first = {c.key: c.config_hash for c in load_benchmark(write_config(tmp_path, base)).cells}
    second = {c.key: c.config_hash for c in load_benchmark(write_config(tmp_path, changed)).cells}
    assert first.keys() == second.keys()
    fgsm, pgd = "b/fundus/resnet18/fgsm/0.01/seed0", "b/fundus/resnet18/pgd/0.01/seed0"
    assert first[fgsm] == second[fgsm] and first[pgd] != second[pgd]


def test_profiles_merge_into_datasets(tmp_path):
    config = minimal(attacks={"fgsm": {"budgets": [0.01]}})
    config["profiles"] = {"real": {"datasets": {"fundus": {"train": "retinamnist"}}}, "small": {"seeds": [1, 2]}}
    path = write_config(tmp_path, config)
    cells = load_benchmark(path, ["real", "small"]).cells
    assert {cell.seed for cell in cells} == {1, 2}
    assert all(cell.models[0].train_config == CONFIG_DIR / "train" / "retinamnist.yaml" for cell in cells)
    with pytest.raises(ValueError, match="unknown profile 'nope'"):
        load_benchmark(path, ["nope"])


@pytest.mark.parametrize(
    ("dataset", "message"),
    [
        ({"attacks": {"fgsm": {"budget": [0.1]}}}, r"datasets.fundus.attacks.fgsm: unknown keys \['budget'\]"),
        ({"attacks": {"x": {"attack": "nope"}}}, "datasets.fundus.attacks.x: unknown attack 'nope'"),
        ({"attacks": {"x": {"attack": "attacks.nope.Attack"}}}, "attacks.x: .*'attacks.nope.Attack': cannot import"),
        ({"attacks": {"x": {"attack": "torch.nn.Linear"}}}, "attacks.x: .* is not a subclass of attacks.Attack"),
        ({"attacks": {"deepfool": {"budgets": [0.1]}}}, "minimal-perturbation attack"),
        ({"trainer": {}}, r"datasets.fundus: unknown keys \['trainer'\]"),
        ({"attacks": {"pgd": {"budgets": [0.1], "settings": {"step": 3}}}}, "attacks.pgd: .*keyword.*'step'"),
        ({"attacks": {"pgd": {"budgets": [0.1], "settings": {"steps": 0}}}}, "attacks.pgd: steps"),
        ({"transfer": {"attacks": {"fgsm": {}}, "sources": [["ghost"]]}}, "unknown model 'ghost'"),
        ({"transfer": {"attacks": {"fgsm": {}}, "settings": {}}}, r"transfer: unknown keys \['settings'\]"),
        ({"detection": {"attacks": {"fgsm": {"budgets": [0.1]}}}}, "budgets belong to the study"),
        ({"detection": {"attacks": {"deepfool": {}}, "budgets": [0.1]}}, "minimal-perturbation attack"),
    ],
)
def test_config_errors_name_the_key(tmp_path, dataset, message):
    with pytest.raises(ValueError, match=message):
        load_benchmark(write_config(tmp_path, minimal(**dataset)))


def test_an_attack_named_by_import_path_gets_its_budget(tmp_path):
    path = "tests.benchmarks.rank_failing.FailsOnRankOne"
    config = minimal(attacks={"mine": {"attack": path, "budgets": ["4/255"], "settings": {"norm": "l2"}}})
    (cell,) = load_benchmark(write_config(tmp_path, config)).cells
    attack = cell.attacks[0].build(seed=0)
    assert type(attack).__name__ == "FailsOnRankOne" and attack.eps == pytest.approx(4 / 255)
    assert attack.norm.name == "l2"


def test_unknown_train_config_lists_the_shipped_ones(tmp_path):
    config = {"datasets": {"d": {"train": "no_such_train_config"}}}
    with pytest.raises(ValueError, match="datasets.d.train: config 'no_such_train_config' not found.*synthetic_fundus"):
        load_benchmark(write_config(tmp_path, config))


def test_shards_partition_the_grid():
    cells = load_benchmark(TINY).cells
    shards = [select_shard(cells, index, 3) for index in range(3)]
    keys = [cell.key for shard in shards for cell in shard]
    assert sorted(keys) == sorted(cell.key for cell in cells)
    assert max(map(len, shards)) - min(map(len, shards)) <= 1
    with pytest.raises(ValueError, match="--shard"):
        select_shard(cells, 3, 3)


def test_set_assignments_apply_after_profiles(tmp_path):
    config = minimal(attacks={"fgsm": {"budgets": [0.01]}})
    config["profiles"] = {"quick": {"evaluation": {"max_batches": 2}}}
    path = write_config(tmp_path, config)
    assignments = ["evaluation.max_batches=1", "datasets.fundus.attacks.fgsm.budgets=[0.02]"]
    cells = load_benchmark(path, ["quick"], assignments).cells
    assert [(cell.evaluation["max_batches"], cell.budget) for cell in cells] == [(1, 0.02)]
    with pytest.raises(ValueError, match="--set expects"):
        load_benchmark(path, [], ["evaluation.max_batches"])


def test_deep_merge_replaces_lists_and_merges_mappings():
    merged = deep_merge({"a": {"b": 1, "c": [1]}, "d": 1}, {"a": {"c": [2]}, "e": 2})
    assert merged == {"a": {"b": 1, "c": [2]}, "d": 1, "e": 2}
    assert deep_merge(merged, {"a": {"b": None}, "d": None}) == {"a": {"c": [2]}, "e": 2}


@pytest.mark.parametrize("name", ["default", "exposure_attack", "smia", "ma2020"])
def test_shipped_benchmarks_load_with_every_profile(name):
    path = resolve_config(name)
    profiles = list((yaml.safe_load(path.read_text()) or {}).get("profiles") or {})
    for chosen in [[], *([profile] for profile in profiles)]:
        assert load_benchmark(path, chosen).cells


def test_settings_relative_to_the_budget_resolve_at_each_budget(tmp_path):
    path = tmp_path / "grid.yaml"
    path.write_text(
        "datasets:\n  fundus:\n    train: synthetic_fundus\n    attacks:\n"
        "      pgd: {budgets: [2/255, 8/255], settings: {steps: 20, alpha: eps/10}}\n"
        "      bim: {budgets: [4/255], settings: {alpha: 0.5*eps/2}}\n"
    )
    cells = load_benchmark(path).cells
    steps = {(cell.attack, cell.budget): cell.settings()["attacks"][0]["settings"]["alpha"] for cell in cells}
    assert steps == pytest.approx({("pgd", 2 / 255): 0.2 / 255, ("pgd", 8 / 255): 0.8 / 255, ("bim", 4 / 255): 1 / 255})
    path.write_text(path.read_text().replace("alpha: eps/10", "alpha: eps/ten"))
    with pytest.raises(ValueError, match=r"fundus\.attacks\.pgd.*alpha.*'eps/ten'"):
        load_benchmark(path)
