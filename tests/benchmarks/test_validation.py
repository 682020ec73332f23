"""The up-front check of a benchmark (`benchmarks/validation.py`): every bad value is one problem naming its
file, dotted key and value; all problems come together; model and data must agree; real-data files are
listed; and no network is built."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from benchmarks.grid import CONFIG_DIR, resolve_config
from benchmarks.problems import ConfigError, Problem
from benchmarks.validation import validate_benchmark

BASE: dict[str, Any] = {
    "name": "b",
    "seeds": [0],
    "evaluation": {"max_batches": 1, "examples": 0, "brisque": False},
    "overrides": {"trainer.max_epochs": 1, "data.init_args.num_samples": 40, "data.init_args.size": 32},
    "datasets": {
        "fundus": {
            "train": "synthetic_fundus",
            "attacks": {"fgsm": {"budgets": ["8/255"]}, "pgd": {"budgets": ["8/255"], "settings": {"steps": 2}}},
        }
    },
}
FUNDUS = ("datasets", "fundus")


def changed(*updates: tuple[tuple[str, ...], Any]) -> dict[str, Any]:
    """BASE with each (path, value) set; the value None removes the key."""
    config = copy.deepcopy(BASE)
    for path, value in updates:
        section = config
        for part in path[:-1]:
            section = section.setdefault(part, {})
        if value is None:
            section.pop(path[-1], None)
        else:
            section[path[-1]] = value
    return config


def write(tmp_path: Path, config: dict[str, Any] | str, name: str = "bench.yaml") -> Path:
    path = tmp_path / name
    path.write_text(config if isinstance(config, str) else yaml.safe_dump(config))
    return path


def problems_of(path: Path, *args: Any) -> tuple[Problem, ...]:
    with pytest.raises(ConfigError) as error:
        validate_benchmark(path, *args)
    return error.value.problems


def test_the_base_config_is_valid(tmp_path):
    benchmark = validate_benchmark(write(tmp_path, BASE))
    assert [cell.key for cell in benchmark.cells] == [
        "b/fundus/resnet18/fgsm/8_255/seed0",
        "b/fundus/resnet18/pgd/8_255/seed0",
    ]


@pytest.mark.parametrize(
    ("update", "key", "fragment"),
    [
        ((FUNDUS + ("attacks", "fgsm", "budgets"), "28"), "datasets.fundus.attacks.fgsm.budgets", "'28'"),
        ((FUNDUS + ("attacks", "fgsm", "budgets"), [float("inf")]), "datasets.fundus.attacks.fgsm.budgets", "inf"),
        ((FUNDUS + ("attacks", "fgsm", "budgets"), [float("nan")]), "datasets.fundus.attacks.fgsm.budgets", "nan"),
        ((FUNDUS + ("attacks", "fgsm", "budgets"), [-1]), "datasets.fundus.attacks.fgsm.budgets", "-1"),
        ((FUNDUS + ("attacks", "fgsm", "budgets"), ["1/0"]), "datasets.fundus.attacks.fgsm.budgets", "'1/0'"),
        (
            (FUNDUS + ("attacks", "fgsm", "budgets"), ["8/255", "8/255"]),
            "datasets.fundus.attacks.fgsm.budgets",
            "8_255 more than once",
        ),
        ((FUNDUS + ("attacks", "fgsm", "budgets"), None), "datasets.fundus.attacks.fgsm", "needs budgets"),
        (
            (FUNDUS + ("attacks", "fgsm", "settings"), {"eps": 0.1}),
            "datasets.fundus.attacks.fgsm.settings.eps",
            "takes its eps from the budgets",
        ),
        ((FUNDUS + ("attacks", "pgd", "settings"), [3]), "datasets.fundus.attacks.pgd.settings", "[3]"),
        ((FUNDUS + ("attacks", "pgd", "settings", "steps"), 1.5), "datasets.fundus.attacks.pgd", "1.5"),
        ((FUNDUS + ("attacks", "pgd", "attack"), 7), "datasets.fundus.attacks.pgd", "got 7"),
        ((("seeds",), [1.5]), "seeds", "1.5"),
        ((("seeds",), "abc"), "seeds", "'abc'"),
        ((("seeds",), []), "seeds", "[]"),
        ((("seeds",), [0, 0]), "seeds", "seed 0 more than once"),
        ((("seeds",), [True]), "seeds", "True"),
        ((("seeds",), [-1]), "seeds", "-1"),
        ((("evaluation", "examples"), -3), "evaluation.examples", "-3"),
        ((("evaluation", "max_batches"), "lots"), "evaluation.max_batches", "'lots'"),
        ((("evaluation", "max_batches"), 0), "evaluation.max_batches", "got 0"),
        ((("evaluation", "brisque"), "yes please"), "evaluation.brisque", "'yes please'"),
        ((("evaluation",), 3), "evaluation", "got 3"),
        ((("name",), "a/b"), "name", "'a/b'"),
        ((("name",), 5), "name", "got 5"),
        ((("description",), ["x"]), "description", "['x']"),
        ((("datasets",), ["fundus"]), "datasets", "['fundus']"),
        ((("datasets",), {}), "datasets", "at least one dataset"),
        ((FUNDUS + ("train",), 5), "datasets.fundus.train", "got 5"),
        ((FUNDUS + ("models",), {"a/b": {}}), "datasets.fundus.models.a/b", "'a/b'"),
        (
            (FUNDUS + ("transfer",), {"attacks": {"fgsm": {"budgets": ["8/255"]}}, "sources": "resnet18"}),
            "datasets.fundus.transfer.sources",
            "'resnet18'",
        ),
        (
            (
                FUNDUS + ("detection",),
                {"attacks": {"fgsm": {}}, "budgets": ["8/255"], "settings": {"detectors": ["nope"]}},
            ),
            "datasets.fundus.detection.settings",
            "nope",
        ),
        (
            (
                FUNDUS,
                {
                    "train": "synthetic_fundus",
                    "attacks": {"detection": {"attack": "fgsm", "budgets": ["8/255"]}},
                    "detection": {"attacks": {"fgsm": {}}, "budgets": ["8/255"]},
                },
            ),
            "datasets.fundus",
            "share the key 'b/fundus/resnet18/detection/8_255/seed0'",
        ),
        (
            (("overrides", "model.init_args.model_name"), "resnet999"),
            "overrides.model.init_args.model_name",
            "'resnet999' is not a known network (see timm.list_models())",
        ),
        (
            (FUNDUS + ("models",), {"big": {"model.init_args.model_name": "resnet5O"}}),
            "datasets.fundus.models.big.model.init_args.model_name",
            "'resnet5O'",
        ),
        (
            (("overrides", "model.init_args.num_classes"), "five"),
            "overrides.model.init_args.num_classes",
            "expects int, got 'five'",
        ),
        ((("overrides", "model.init_args.depth"), 3), "overrides.model.init_args.depth", "takes no argument 'depth'"),
        ((("overrides", "trainer.max_epochz"), 3), "overrides.trainer.max_epochz", "not an argument"),
        (
            (("overrides", "model.init_args.in_channels"), 1),
            "overrides.model.init_args.in_channels",
            "takes 1-channel images but the datamodule gives 3",
        ),
        (
            (("overrides", "model.init_args.num_classes"), 2),
            "overrides.model.init_args.num_classes",
            "the datamodule has 5 classes, so num_classes must be 5, got 2",
        ),
        ((("overrides", "data.init_args.size"), -3), "overrides.data.init_args.size", "size must be positive"),
        (
            (("overrides", "data.class_path"), "datamodules.SyntheticLungCTDataModule"),
            "overrides.data.class_path",
            "ClassifierModule is a classification model but datamodules.SyntheticLungCTDataModule holds segmentation",
        ),
        (
            (FUNDUS + ("overrides",), {"data.init_args.referable": True}),  # the train config's num_classes: 5
            "synthetic_fundus.yaml: model.init_args.num_classes",
            "has 2 classes, so num_classes must be 2, got 5",
        ),
    ],
)
def test_each_bad_value_is_one_problem_naming_file_key_and_value(tmp_path, update, key, fragment):
    """``key`` is the dotted key in the benchmark config, or ``train config: key`` in a train config."""
    path = write(tmp_path, changed(update))
    (problem,) = problems_of(path)
    train_config, _, train_key = key.rpartition(": ")
    assert problem.file == (str(CONFIG_DIR / "train" / train_config) if train_config else str(path))
    assert problem.key == train_key
    assert fragment in str(problem), str(problem)


def test_all_problems_come_together_from_every_file(tmp_path):
    train = write(
        tmp_path,
        (CONFIG_DIR / "train" / "synthetic_lung_ct.yaml")
        .read_text()
        .replace("encoder_name: resnet18", "encoder_name: resnet1800"),
        "lung.yaml",
    )
    config = changed(
        (("seeds",), [1.5]),
        (FUNDUS + ("attacks", "pgdd"), {"budgets": ["8/255"]}),
        (FUNDUS + ("attacks", "fgsm", "budgets"), [".inf"]),
        (FUNDUS + ("overrides",), {"model.init_args.model_name": "resnet999"}),
        (("datasets", "lungs"), {"train": str(train), "attacks": {"pgd": {"budgets": [0.05]}}}),
    )
    problems = problems_of(write(tmp_path, config))
    located = [(Path(problem.file).name, problem.key) for problem in problems]
    assert sorted(located) == [
        ("bench.yaml", "datasets.fundus.attacks.fgsm.budgets"),
        ("bench.yaml", "datasets.fundus.attacks.pgdd"),
        ("bench.yaml", "datasets.fundus.overrides.model.init_args.model_name"),
        ("bench.yaml", "seeds"),
        ("lung.yaml", "model.init_args.encoder_name"),
    ]


def test_yaml_errors_name_the_file_and_line(tmp_path):
    (problem,) = problems_of(write(tmp_path, "name: b\nseeds: [0, 1\ndatasets: {}\n"))
    assert problem.file == str(tmp_path / "bench.yaml") and problem.message.startswith("line 3, column 9: ")
    assert "(while parsing a flow sequence on line 2)" in problem.message
    assert "invalid YAML" in str(problem) and "unicode string" not in str(problem)
    train = write(tmp_path, "model:\n  class_path: lightning_modules.ClassifierModule\n  init_args: {lr: [\n", "t.yaml")
    (problem,) = problems_of(write(tmp_path, changed((FUNDUS + ("train",), str(train)))))
    assert problem.file == str(train) and "line 4" in problem.message
    duplicated = "name: b\nseeds: [0]\nseeds: [1]\n"
    (problem,) = problems_of(write(tmp_path, duplicated))
    assert "'seeds' is given twice (first on line 2)" in problem.message and "line 3" in problem.message


def test_exponents_without_a_dot_are_numbers(tmp_path):
    config = yaml.safe_dump(changed((FUNDUS + ("attacks", "pgd", "settings", "alpha"), 1e-3)))
    benchmark = validate_benchmark(write(tmp_path, config.replace("0.001", "1e-3")))
    assert benchmark.cells[1].attacks[0].build(seed=0).settings["alpha"] == 1e-3


def grey_mnist(folder: Path, flag: str, counts: dict[str, int], classes: int = 3) -> None:
    """A MedMNIST-like archive of 28 px greyscale images with labels 0..classes-1."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    arrays = {}
    for split, count in counts.items():
        arrays[f"{split}_images"] = rng.integers(0, 256, (count, 28, 28), dtype=np.uint8)
        arrays[f"{split}_labels"] = (np.arange(count) % classes).reshape(-1, 1)
    np.savez(folder / f"{flag}.npz", **arrays)


def mnist_train_config(tmp_path: Path, root: Path, channels: int, in_channels: int, num_classes: int) -> Path:
    config = {
        "model": {
            "class_path": "lightning_modules.ClassifierModule",
            "init_args": {"model_name": "resnet18", "num_classes": num_classes, "in_channels": in_channels},
        },
        "data": {
            "class_path": "datamodules.MedMNISTDataModule",
            "init_args": {"flag": "greymnist", "root": str(root), "channels": channels},
        },
    }
    return write(tmp_path, config, "greymnist.yaml")


def mnist_problems(tmp_path: Path, train: Path) -> tuple[Problem, ...]:
    bench = changed((FUNDUS + ("train",), str(train)), (("overrides",), {"trainer.max_epochs": 1}))
    try:
        validate_benchmark(write(tmp_path, bench))
    except ConfigError as error:
        return error.problems
    return ()


def test_real_data_files_are_checked_before_anything_runs(tmp_path):
    root = tmp_path / "data"
    train = mnist_train_config(tmp_path, root, channels=1, in_channels=1, num_classes=3)
    (problem,) = mnist_problems(tmp_path, train)
    assert (problem.file, problem.key, problem.value) == (str(train), "data.init_args.root", str(root))
    assert "does not exist" in problem.message
    root.mkdir()
    (problem,) = mnist_problems(tmp_path, train)
    assert problem.key == "data.init_args.root" and "greymnist.npz" in problem.message
    grey_mnist(root, "greymnist", {"train": 6, "val": 3})
    (problem,) = mnist_problems(tmp_path, train)
    assert "missing keys ['test_images', 'test_labels']" in problem.message
    grey_mnist(root, "greymnist", {"train": 6, "val": 3, "test": 0})
    (problem,) = mnist_problems(tmp_path, train)
    assert problem.key == "data.init_args.root" and "the test split" in problem.message
    grey_mnist(root, "greymnist", {"train": 6, "val": 3, "test": 3})
    assert mnist_problems(tmp_path, train) == ()


def test_a_grey_dataset_and_its_model_must_agree_on_channels_and_classes(tmp_path):
    root = tmp_path / "data"
    grey_mnist(root, "greymnist", {"train": 6, "val": 3, "test": 3})
    train = mnist_train_config(tmp_path, root, channels=3, in_channels=1, num_classes=3)
    (problem,) = mnist_problems(tmp_path, train)  # the failure that used to be a convolution error per cell
    assert (problem.file, problem.key, problem.value) == (str(train), "model.init_args.in_channels", 1)
    assert "takes 1-channel images but the datamodule gives 3" in problem.message
    train = mnist_train_config(tmp_path, root, channels=1, in_channels=1, num_classes=5)
    (problem,) = mnist_problems(tmp_path, train)  # MedMNIST counts the classes from the labels: 3
    assert (problem.key, problem.value) == ("model.init_args.num_classes", 5)


def test_segmenter_and_detector_contracts(tmp_path):
    def lung(**overrides: Any) -> tuple[Problem, ...]:
        config = changed(
            (FUNDUS + ("train",), "synthetic_lung_ct"),
            (FUNDUS + ("attacks",), {"pgd": {"budgets": [0.05]}}),
            (("overrides",), {"data.init_args.num_samples": 20, **overrides}),
        )
        try:
            validate_benchmark(write(tmp_path, config))
        except ConfigError as error:
            return error.problems
        return ()

    assert lung() == () and lung(**{"model.init_args.classes": 2}) == ()  # binary: 1 logit or 2 classes
    (problem,) = lung(**{"model.init_args.classes": 3})
    assert (problem.key, problem.value) == ("overrides.model.init_args.classes", 3) and "must be 1 or 2" in str(problem)
    (problem,) = lung(**{"model.init_args.encoder_name": "tu-resnet999"})
    assert problem.key == "overrides.model.init_args.encoder_name"
    assert lung(**{"model.init_args.encoder_name": "tu-resnet10t"}) == ()
    endoscopy = changed(
        (FUNDUS + ("train",), "synthetic_endoscopy"),
        (("overrides",), {"data.init_args.channels": 1, "model.init_args.num_classes": 3}),
    )
    problems = problems_of(write(tmp_path, endoscopy))
    assert {(problem.key, problem.value) for problem in problems} == {
        ("overrides.data.init_args.channels", 1),
        ("overrides.model.init_args.num_classes", 3),
    }


def test_a_model_and_data_of_different_tasks_are_refused(tmp_path):
    text = (CONFIG_DIR / "train" / "synthetic_fundus.yaml").read_text()
    train = write(tmp_path, text.replace("SyntheticFundusDataModule", "SyntheticLungCTDataModule"), "mixed.yaml")
    (problem,) = problems_of(write(tmp_path, changed((FUNDUS + ("train",), str(train)))))
    assert (problem.file, problem.key) == (str(train), "model.class_path")
    assert "classification model but datamodules.SyntheticLungCTDataModule holds segmentation data" in problem.message


def test_validation_builds_no_network(tmp_path, monkeypatch):
    import segmentation_models_pytorch
    import timm

    from lightning_modules import detector

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("the validation pass built a network")

    monkeypatch.setattr(timm, "create_model", refuse)
    monkeypatch.setattr(segmentation_models_pytorch, "Unet", refuse)
    for name in list(detector.FASTER_RCNN_BACKBONES):
        monkeypatch.setitem(detector.FASTER_RCNN_BACKBONES, name, refuse)
    config = changed(
        (("datasets", "lungs"), {"train": "synthetic_lung_ct", "attacks": {"pgd": {"budgets": [0.05]}}}),
        (("datasets", "frames"), {"train": "synthetic_endoscopy", "attacks": {"fgsm": {"budgets": [0.01]}}}),
    )
    benchmark = validate_benchmark(write(tmp_path, config))
    assert {cell.dataset for cell in benchmark.cells} == {"fundus", "lungs", "frames"}


@pytest.mark.parametrize("name", ["default", "exposure_attack", "smia", "ma2020"])
def test_shipped_benchmarks_validate_with_every_profile(name):
    path = resolve_config(name)
    profiles = list((yaml.safe_load(path.read_text()) or {}).get("profiles") or {})
    real_data = Path("../shared/data")
    for chosen in [[], *([profile] for profile in profiles)]:
        if chosen == ["real"] and not real_data.is_dir():
            continue  # the real profiles read ../shared/data relative to the repository root
        assert validate_benchmark(path, chosen).cells
