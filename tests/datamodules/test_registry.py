"""Building datamodules from LightningCLI-style configs."""

import inspect

import pytest
from jsonargparse import ArgumentParser

import datamodules
from datamodules import MedicalDataModule
from datamodules.paths import DATA_DIR_VARIABLE, shared_data_dir

DATAMODULE_CLASSES = [
    getattr(datamodules, name) for name in datamodules.__all__
    if isinstance(getattr(datamodules, name), type) and issubclass(getattr(datamodules, name), MedicalDataModule)
    and getattr(datamodules, name) is not MedicalDataModule
]


@pytest.mark.parametrize("cls", DATAMODULE_CLASSES, ids=lambda cls: cls.__name__)
def test_constructor_arguments_are_plain_config_types(cls):
    parser = ArgumentParser()
    parser.add_class_arguments(cls, "data")
    defaults = parser.get_defaults().data  # jsonargparse resolves every argument's type
    own_flip = inspect.signature(cls).parameters.get("flip_p")  # lung fields: flips would swap the sides
    flip_p = 0.5 if own_flip is None else own_flip.default
    assert (defaults.seed, defaults.flip_p, defaults.shift_limit) == (0, flip_p, 0.05)  # the forwarded **options too


def test_class_path_config_builds_a_datamodule():
    parser = ArgumentParser()
    parser.add_subclass_arguments(MedicalDataModule, "data")
    config = parser.parse_object(
        {
            "data": {
                "class_path": "datamodules.SyntheticFundusDataModule",
                "init_args": {"num_samples": 5, "size": 24, "seed": 3, "rotate_limit": 5.0},
            }
        }
    )
    dm = parser.instantiate(config).data
    assert dm.num_samples == 5 and dm.image_size == 24 and dm.hparams["size"] == 24
    assert (dm.seed, dm.rotate_limit) == (3, 5.0) and dm.hparams["seed"] == 3 and dm.hparams["flip_p"] == 0.5


def test_data_dir_follows_the_environment_variable(tmp_path, monkeypatch):
    monkeypatch.setenv(DATA_DIR_VARIABLE, str(tmp_path))
    assert shared_data_dir() == tmp_path
