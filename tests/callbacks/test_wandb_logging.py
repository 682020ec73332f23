"""The W&B path for real: trainer.test with an offline WandbLogger, read back from the run's files."""

from __future__ import annotations

import json
import time
from pathlib import Path

import lightning as L
import numpy as np
import PIL.Image
import pytest
import torch

from attacks.gradient import FGSM
from callbacks.analysis import AdversarialAnalysis
from callbacks.attack_eval import AdversarialEvaluation
from callbacks.wandb_logging import make_wandb_logger
from tests.wandb_records import read_offline_run


@pytest.fixture()
def wandb_dirs(tmp_path, monkeypatch):
    for name in ("WANDB_DIR", "WANDB_DATA_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR"):
        path = tmp_path / name.lower()
        path.mkdir()
        monkeypatch.setenv(name, str(path))
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    return tmp_path


@pytest.mark.slow
def test_logged_values_equal_the_callback_metrics(fitted_classifier, wandb_dirs):
    import wandb

    module, datamodule = fitted_classifier
    callback = AdversarialEvaluation({"fgsm": lambda eps: FGSM(eps=eps)}, epsilons=[2 / 255, 8 / 255],
                                     analysis=AdversarialAnalysis(samples=2, points=3, features=8))
    logger = make_wandb_logger(module, datamodule, ["fgsm"], save_dir=wandb_dirs / "wandb_dir")
    trainer = L.Trainer(
        accelerator="cpu", devices=1, logger=logger, callbacks=[callback], enable_progress_bar=False,
        enable_model_summary=False, limit_test_batches=1,
    )
    trainer.test(module, datamodule=datamodule, verbose=False)
    run_dir = Path(logger.experiment.dir).parent
    wandb.finish()

    run = read_offline_run(run_dir)
    for _ in range(30):  # under load the offline writer has twice been seen to finish the summary late
        if "clean/accuracy" in run.summary:
            break
        time.sleep(1)
        run = read_offline_run(run_dir)
    assert callback.results, "the callback computed no metrics"
    logged = {name: value for row in run.history for name, value in row.items()} | run.summary
    for name, value in callback.results.items():
        assert name in logged, (name, sorted(run.summary)[:40], len(run.history))
        assert logged[name] == pytest.approx(value, nan_ok=True), name
    assert {"clean/accuracy", "adv/fgsm/8_255/accuracy", "adv/fgsm/8_255/success_rate"} <= set(run.summary)
    assert run.group == "SyntheticFundusDataModule"
    assert run.job_type == "fgsm"
    assert run.tags == ["resnet18", "classification"]
    assert run.config["attacks"]["fgsm/8_255"]["eps"] == pytest.approx(8 / 255)
    assert run.config["model"]["model_name"] == "resnet18"

    # 4 example rows for each of the two budgets: a table of their texts, and their images as real PNG files
    assert (run.summary["examples/_type"], run.summary["examples/nrows"]) == ("table-file", 8)
    table = json.loads((run_dir / "files" / run.summary["examples/path"]).read_text())
    examples = callback.last_examples
    assert [row[:2] for row in table["data"]] == [[row.sample_id, row.attack] for row in examples]
    assert run.summary["examples/images/count"] == 8
    strips = run.summary["examples/images/filenames"]
    for name, caption, row in zip(strips, run.summary["examples/images/captions"], examples, strict=True):
        assert name.endswith(".png") and row.sample_id in caption and row.adversarial_prediction in caption
        width = row.clean.shape[2]
        pixels = torch.from_numpy(np.array(PIL.Image.open(run_dir / "files" / name).convert("RGB"))).permute(2, 0, 1)
        thirds = (pixels[:, :, :width], pixels[:, :, width : 2 * width], pixels[:, :, 2 * width :])
        for decoded, logged in zip(thirds, (row.clean, row.perturbation, row.adversarial), strict=True):
            assert torch.equal(decoded, logged)

    # the analysis views: landscape (3 offsets), t-SNE (2 x 8 x 2 points), Grad-CAM pairs (2 samples x 2 budgets)
    for name, rows in (("landscape", 3), ("tsne", 32)):
        assert (run.summary[f"analysis/{name}/_type"], run.summary[f"analysis/{name}/nrows"]) == ("table-file", rows)
    assert run.summary["analysis/attribution/count"] == 4
    assert len(list((run_dir / "files" / "media" / "images" / "analysis").glob("attribution_*.png"))) == 4
    assert "clean/sharpness" in run.summary and "adv/fgsm/8_255/cam_rank_corr" in run.summary
