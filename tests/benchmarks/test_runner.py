"""`medadv run` end to end on a tiny grid, as users run it (a subprocess): kill -9 and resume gives the
uninterrupted table, two shards merged give the full run, 2-process DDP gives the 1-process numbers, and
a cell failing on one DDP rank stops the job instead of hanging it."""

from __future__ import annotations

import math
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from benchmarks.report import write_report
from benchmarks.store import ResultsStore
from benchmarks.tables import task_of, worst_case_table, worst_cases
from tests.benchmarks.cli_runs import ROOT, medadv, run_env, run_medadv

TINY = Path(__file__).parent / "configs" / "tiny.yaml"
FAILING = Path(__file__).parent / "configs" / "rank_failing.yaml"
TIMING_METRICS = ("adv/seconds_per_image",)
pytestmark = pytest.mark.slow


def run_tiny(output: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    return run_medadv(["run", "--config", str(TINY), "--output", str(output), "--no-report", *args], **env)


def table(store_path: Path) -> dict[str, dict]:
    """key -> metrics without timings, for every done cell; fails on unfinished rows."""
    with ResultsStore(store_path) as store:
        assert [r.key for r in store.records(status=None) if r.status != "done"] == []
        return {
            record.key: {k: v for k, v in record.metrics.items() if k not in TIMING_METRICS}
            for record in store.records()
        }


def assert_same_tables(actual: dict[str, dict], expected: dict[str, dict]) -> None:
    assert sorted(actual) == sorted(expected)
    for key, metrics in expected.items():
        assert actual[key].keys() == metrics.keys(), key
        for name, value in metrics.items():
            same = (math.isnan(value) and math.isnan(actual[key][name])) or actual[key][name] == pytest.approx(value)
            assert same, f"{key} {name}: {actual[key][name]} != {value}"


@pytest.fixture(scope="module")
def full_run(tmp_path_factory) -> Path:
    """An uninterrupted run of the tiny grid: its output folder (store, model cache, logs)."""
    output = tmp_path_factory.mktemp("full")
    result = run_tiny(output)
    assert "0 failed" in result.stdout
    return output


def test_full_run_stores_every_cell_with_examples(full_run):
    results = table(full_run / "results.db")
    assert len(results) == 11
    with ResultsStore(full_run / "results.db") as store:
        attack_records = [r for r in store.records() if r.kind == "attack"]
        assert all(len(store.examples(r.key)) == 2 for r in attack_records)
        assert all(r.versions["torch"] and r.seconds > 0 for r in attack_records)
        # every cell stores its attack's full settings, defaults included, not only what the config named
        for record in attack_records:
            (attack,) = record.settings["attacks"]
            assert attack["settings"]["seed"] == record.seed and "steps" in attack["settings"], record.key
            if record.attack != "deepfool":
                assert {"eps", "norm", "early_stop", "target_mode"} <= set(attack["settings"]), record.key
            # per-sample scores of the whole 10-image test split, clean and attacked, for the worst case
            samples = store.sample_scores(record.key)
            assert set(samples) == {"clean", "adv"} and len(samples["adv"]) == len(samples["clean"]) == 10
            assert record.metrics["check/random_model"] == record.metrics["check/probability_outputs"] == 0
        fgsm, bim = (store.sample_scores(f"tiny/fundus/resnet18/{a}/8_255/seed0")["adv"] for a in ("fgsm", "bim"))
        resnet = [r for r in attack_records if r.model == "resnet18"]
        headline = worst_case_table(worst_cases(resnet, store.sample_scores), task_of(resnet))
        html, _ = write_report(store, "tiny", full_run / "report")
    rows = {row[0]: row for row in headline.rows}  # 8/255 pools FGSM and BIM; 2/255 has FGSM alone
    _, _, worst, attacks, _ = rows["8/255 (linf)"]
    assert attacks == "2" and rows["2/255 (linf)"][3] == "1" and worst.interval is not None
    assert worst.mean == pytest.approx(sum(min(fgsm[i], bim[i]) for i in fgsm) / len(fgsm))
    assert worst.mean <= min(sum(fgsm.values()), sum(bim.values())) / len(fgsm)
    assert "Worst case over attacks: accuracy" in html.read_text()
    fgsm = results["tiny/fundus/resnet18/fgsm/8_255/seed0"]
    assert fgsm["adv/linf"] == pytest.approx(8 / 255, rel=1e-3)
    assert fgsm["adv/accuracy"] <= fgsm["clean/accuracy"]
    transfer = results["tiny/fundus/transfer/fgsm/8_255/seed0"]
    models = ("resnet18", "resnet10t")
    assert set(transfer) == {f"{source}->{target}/success_rate" for source in models for target in models}


def test_a_second_run_skips_every_finished_cell(full_run):
    result = run_tiny(full_run)
    assert "0 cells run, 11 already done" in result.stdout


def test_kill_9_and_resume_gives_the_uninterrupted_table(full_run, tmp_path):
    store_path = tmp_path / "results.db"
    command = medadv("run", "--config", str(TINY), "--output", str(tmp_path), "--no-report")
    process = subprocess.Popen(command, cwd=ROOT, env=run_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 240
    try:
        while time.monotonic() < deadline and process.poll() is None:
            if store_path.is_file():
                with ResultsStore(store_path) as store:
                    if len(store.finished()) >= 3:
                        break
            time.sleep(0.1)
        assert process.poll() is None, "the run ended before it could be killed"
        process.send_signal(signal.SIGKILL)
        process.wait()
    finally:
        if process.poll() is None:
            process.kill()
    with ResultsStore(store_path) as store:
        done = len(store.finished())
    assert 3 <= done < 11
    result = run_tiny(tmp_path)
    assert f"{done} already done" in result.stdout
    assert_same_tables(table(store_path), table(full_run / "results.db"))


def test_two_shards_merged_equal_the_full_run(full_run, tmp_path):
    run_tiny(full_run, "--shard", "0/2", "--store", str(tmp_path / "shard0.db"))
    run_tiny(full_run, "--store", str(tmp_path / "shard1.db"), SLURM_ARRAY_TASK_ID="1", SLURM_ARRAY_TASK_COUNT="2")
    shards = [table(tmp_path / f"shard{index}.db") for index in (0, 1)]
    assert not set(shards[0]) & set(shards[1])
    merged = tmp_path / "merged.db"
    result = subprocess.run(
        medadv("results", "--store", str(merged), "--merge", str(tmp_path / "shard0.db"), str(tmp_path / "shard1.db")),
        cwd=ROOT, env=run_env(), capture_output=True, text=True,
    )
    assert result.returncode == 0, result.stderr
    assert "merged 11 cells" in result.stdout
    # the listing opens with the worst case over attacks, the per-sample scores merged with the cells
    headline = result.stdout.find("Worst case over attacks: accuracy (tiny / fundus / resnet18)")
    assert 0 <= headline < result.stdout.index("Results: all benchmarks"), result.stdout
    assert_same_tables(table(merged), table(full_run / "results.db"))


def test_ddp_on_two_processes_gives_the_one_process_numbers(full_run, tmp_path):
    store_path = tmp_path / "ddp.db"
    run_tiny(full_run, "--accelerator", "cpu", "--devices", "2", "--strategy", "ddp", "--store", str(store_path))
    assert_same_tables(table(store_path), table(full_run / "results.db"))


def test_a_cell_failing_on_one_rank_stops_the_ddp_run_instead_of_hanging(full_run, tmp_path):
    store_path = tmp_path / "failing.db"
    command = medadv("run", "--config", str(FAILING), "--output", str(full_run), "--store", str(store_path),
                     "--no-report", "--accelerator", "cpu", "--devices", "2", "--strategy", "ddp")
    process = subprocess.Popen(command, cwd=ROOT, env=run_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True, start_new_session=True)
    try:
        output, _ = process.communicate(timeout=240)
    finally:
        if process.poll() is None:  # a hang: end the whole process group, then fail
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    assert process.returncode != 0, output[-3000:]
    with ResultsStore(store_path) as store:
        records = {r.attack: r for r in store.records(status=None)}
    assert records["fails_on_rank_1"].status == "failed"
    assert "rank 1: Traceback" in records["fails_on_rank_1"].error
    assert "injected failure on rank 1" in records["fails_on_rank_1"].error
    assert "fgsm" not in records or records["fgsm"].status != "done"  # the run stopped at the failure
    result = run_medadv(["run", "--config", str(FAILING), "--output", str(full_run), "--store", str(store_path),
                         "--no-report"])  # one process: no rank 1, so the cell now succeeds, and fgsm runs
    assert "2 cells run, 0 already done, 0 failed" in result.stdout


def test_bad_arguments_name_themselves(tmp_path):
    result = subprocess.run(medadv("run", "--config", "no_such_benchmark", "--output", str(tmp_path)),
                            cwd=ROOT, env=run_env(), capture_output=True, text=True)
    assert result.returncode == 2 and "no_such_benchmark" in result.stderr
    result = subprocess.run(medadv("run", "--config", str(TINY), "--shard", "2/2", "--output", str(tmp_path)),
                            cwd=ROOT, env=run_env(), capture_output=True, text=True)
    assert result.returncode == 2 and "--shard" in result.stderr


def test_wandb_runs_of_a_benchmark_share_a_group_and_config_keys(full_run, tmp_path):
    from tests.wandb_records import read_offline_run

    names = ("WANDB_DATA_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR")
    offline = {name: str(tmp_path / name.lower()) for name in names} | {"WANDB_API_KEY": "", "WANDB_DIR": str(full_run)}
    run_medadv(["run", "--config", str(TINY), "--output", str(full_run), "--store", str(tmp_path / "wandb.db"),
                "--no-report", "--wandb"], NETRC=str(tmp_path / "no-netrc"), **offline)
    run_dirs = sorted((full_run / "wandb").glob("offline-run-*"))
    runs = [read_offline_run(path) for path in run_dirs]
    assert len(runs) == 11
    assert {run.group for run in runs} == {"tiny"}
    assert {run.job_type for run in runs} == {"fgsm", "bim", "deepfool", "detection"}
    keys = {"benchmark", "dataset", "model_label", "attack", "budget", "seed", "kind", "cell"}
    assert all(keys <= set(run.config) for run in runs)
    stored = table(tmp_path / "wandb.db")
    (fgsm,) = [run for run in runs if run.config["model_label"] == "resnet18" and run.config["attack"] == "fgsm"
               and run.config["budget"] == "8_255"]
    assert fgsm.summary["adv/fgsm/8_255/accuracy"] == pytest.approx(
        stored["tiny/fundus/resnet18/fgsm/8_255/seed0"]["adv/accuracy"])
