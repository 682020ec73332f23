"""Building datamodules from names and from LightningCLI-style configs."""

import pytest
from jsonargparse import ArgumentParser

from datamodules import DATAMODULES, MedicalDataModule, SyntheticLungCTDataModule, create_datamodule
from datamodules.paths import DATA_DIR_VARIABLE, shared_data_dir


def test_names_map_to_classes_and_unknown_names_are_listed():
    dm = create_datamodule("synthetic_lung_ct", num_samples=3, size=16)
    assert isinstance(dm, SyntheticLungCTDataModule) and dm.image_size == 16
    with pytest.raises(ValueError, match="unknown datamodule 'mnist'.*synthetic_fundus"):
        create_datamodule("mnist")


@pytest.mark.parametrize("cls", sorted(DATAMODULES.values(), key=lambda c: c.__name__))
def test_constructor_arguments_are_plain_config_types(cls):
    parser = ArgumentParser()
    parser.add_class_arguments(cls, "data")
    defaults = parser.get_defaults().data  # jsonargparse resolves every argument's type
    assert (defaults.seed, defaults.flip_p, defaults.shift_limit) == (0, 0.5, 0.05)  # the forwarded **options too


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
