"""Every package's public names import, as the README shows them."""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest

PACKAGES = ("attacks", "callbacks", "lightning_modules", "datamodules", "benchmarks")


@pytest.mark.parametrize("package", PACKAGES)
def test_every_exported_name_imports(package):
    module = importlib.import_module(package)
    assert module.__all__, f"{package} exports nothing"
    missing = [name for name in module.__all__ if getattr(module, name, None) is None]
    assert missing == []
    with pytest.raises(AttributeError, match="no attribute 'not_a_name'"):
        module.not_a_name  # noqa: B018


def test_readme_short_imports_work_in_a_fresh_interpreter():
    code = ("from attacks import PGD, APGD, SMIA, ATTACKS, build_attack; "
            "from callbacks import AdversarialEvaluation, TransferEvaluation; "
            "print(sorted(PGD(eps=8/255, norm='l2').settings))")
    output = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert {"eps", "steps", "norm", "early_stop", "seed"} <= set(eval(output))
