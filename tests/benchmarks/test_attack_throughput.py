"""A CPU smoke run of the speed table of benchmarks/attack_throughput.py: tiny models, one batch."""

from __future__ import annotations

import importlib.util
import json

import pytest
import torch
from torch import nn

from benchmarks.attack_throughput import SETTINGS, main, reference_run, robust_runs

TINY = ["--speed", "--size", "32", "--batch", "2", "--warmup", "0", "--repeats", "1", "--variants", "fp32", "bf16"]


@pytest.mark.slow
def test_speed_table_times_every_variant_and_the_peer_and_writes_json(tmp_path):
    path = tmp_path / "speed.json"
    report = main([*TINY, "--arch", "resnet18", "--speed-attacks", "pgd10", "--json", str(path)])
    assert json.loads(path.read_text()) == report
    rows = {row["impl"]: row for row in report["rows"]}
    peer = importlib.util.find_spec("torchattacks") is not None
    assert set(rows) == {"ours fp32", "ours bf16"} | ({"torchattacks"} if peer else set())
    assert (report["notes"] == []) == peer
    assert rows["ours fp32"]["speedup_vs_fp32"] == 1.0
    for row in rows.values():
        assert row["peak_mib"] is None  # CPU: no peak memory figure
        assert row["images_per_s"] == pytest.approx(2 / row["seconds"])
        assert 0 <= row["error_rate"] <= 1
        if peer:
            assert row["speedup_vs_peer"] == pytest.approx(rows["torchattacks"]["seconds"] / row["seconds"])


@pytest.mark.slow
def test_segmentation_speed_table_runs_ours_only_and_says_why():
    report = main([*TINY, "--task", "segmentation", "--encoder", "resnet18", "--speed-attacks", "pgd10", "autoattack"])
    assert {(row["attack"], row["impl"]) for row in report["rows"]} == {("pgd10", "ours fp32"), ("pgd10", "ours bf16")}
    assert report["notes"] == ["autoattack: classification only, not run on segmentation"]
    assert report["config"]["model"] == "U-Net (resnet18)"


@pytest.mark.slow
def test_the_autoattack_reference_runs_with_fewer_than_ten_classes():
    """pyautoattack's standard version targets 9 classes (an IndexError with 5); the benchmark limits it to
    K - 1, as ours does. The model is too flat to be fooled at 8/255, so every stage runs (about 10 s)."""
    pytest.importorskip("pyautoattack", reason="pip install --no-deps pyautoattack==0.2.0")
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 5)).eval().requires_grad_(False)
    model[1].weight.mul_(0.01)
    images = torch.rand(4, 3, 8, 8)
    labels = model(images).argmax(dim=1)
    impl, run = reference_run("autoattack", model, 5, torch.device("cpu"))
    adv = run(images, labels)
    assert impl == "pyautoattack" and adv.shape == images.shape
    assert (adv - images).abs().max() <= SETTINGS["pgd10"].eps + 1e-6
    assert torch.equal(model(adv).argmax(dim=1), labels)  # robust: the targeted stages did run


def test_robust_mode_run_attacks_only_the_correct_samples_and_stops_them_once_fooled():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 5)).eval().requires_grad_(False)
    images = torch.rand(16, 3, 8, 8)
    labels = model(images).argmax(dim=1)
    labels[:4] = (labels[:4] + 1) % 5  # four samples misclassified clean
    runs = robust_runs(model, 8 / 255, 5)
    adv = runs["pgd10"]["ours (robust-accuracy mode)"](images, labels)
    assert torch.equal(adv[:4], images[:4])
    assert 0 < (adv - images).abs().max() <= 8 / 255 + 1e-6
    peer = importlib.util.find_spec("torchattacks") is not None
    assert ("torchattacks" in runs["pgd10"]) == peer and "ours" in runs["autoattack"]
