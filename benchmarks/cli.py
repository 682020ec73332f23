"""The `medadv` command line.

  medadv run [--config NAME|PATH] [--profile P]...   run a benchmark grid (resumable) and write its report
             [--dry-run] [--deterministic]          check and list the cells only; bit-identical reruns
             [--lease-seconds S]                    several runs on one store share its cells (leases)
             [--workers N]                          N such runs at once, the CPU threads split among them
  medadv results [--benchmark NAME] [--csv F] [--markdown F] [--merge DB ...]   print, export, merge results
  medadv report [--benchmark NAME]                   write the HTML and Markdown report from the store
  medadv train --config NAME|PATH                    fit one model from a train config

Heavy libraries are imported inside the commands so that `medadv --help` starts fast.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
import warnings
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from benchmarks.leases import DEFAULT_LEASE_SECONDS
from benchmarks.problems import ConfigError

if TYPE_CHECKING:
    from benchmarks.grid import Benchmark
    from benchmarks.runner import RunOptions

SHARD_ENVIRONMENT = ("SLURM_ARRAY_TASK_ID", "SLURM_ARRAY_TASK_COUNT")
BROKEN_PIPE = 128 + 13  # the status of a process ended by SIGPIPE, as shells report it


def parse_shard(text: str | None) -> tuple[int, int]:
    """``i/n`` from ``--shard``, else SLURM's array task id and count, else the whole grid (0/1)."""
    if text is None:
        index, count = (os.environ.get(name) for name in SHARD_ENVIRONMENT)
        if index is None:
            return 0, 1
        if count is None:
            raise ValueError("SLURM_ARRAY_TASK_ID is set without SLURM_ARRAY_TASK_COUNT; pass --shard i/n")
        text = f"{index}/{count}"
    return index_of(text, "--shard")


def index_of(text: str, option: str) -> tuple[int, int]:
    """``(i, n)`` from ``option``'s value ``i/n``, with 0 <= i < n."""
    try:
        index, count = (int(part) for part in text.split("/"))
    except ValueError as error:
        raise ValueError(f"{option} must look like i/n (e.g. 0/4), got {text!r}") from error
    if count < 1 or not 0 <= index < count:
        raise ValueError(f"{option} must be i/n with 0 <= i < n, got {text!r}")
    return index, count


def devices(text: str) -> int | str:
    return int(text) if text.isdigit() else text


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="medadv", description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="run a benchmark grid, store every cell, write the report")
    run.add_argument("--config", default="default", help="benchmark YAML or the name of a shipped one")
    run.add_argument("--profile", action="append", default=[], help="profile of the config to merge (repeatable)")
    run.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                     help="override one config key after the profiles, e.g. evaluation.max_batches=1 (repeatable)")
    run.add_argument("--output", type=Path, default=Path("runs"), help="folder for the store, models, logs, reports")
    run.add_argument("--store", type=Path, help="results database (default: OUTPUT/results.db)")
    run.add_argument("--shard", help="run shard i of n (i/n); default from SLURM_ARRAY_TASK_ID/COUNT")
    run.add_argument("--accelerator", default="auto", help="Lightning accelerator (cpu, gpu, auto)")
    run.add_argument("--devices", type=devices, default=1, help="devices per node for DDP evaluation")
    run.add_argument("--num-nodes", type=int, default=1, help="nodes for DDP evaluation")
    run.add_argument("--strategy", default="auto", help="Lightning strategy (ddp for several devices)")
    run.add_argument("--wandb", action="store_true", help="also log every cell to W&B (offline without a key)")
    run.add_argument("--no-report", action="store_true", help="skip writing the report at the end")
    run.add_argument("--dry-run", action="store_true",
                     help="check the config, list the cells (done or to run) and the models to train, and exit")
    run.add_argument("--lease-seconds", type=float, default=DEFAULT_LEASE_SECONDS,
                     help="how long a cell claimed by a worker that stopped heart-beating stays its own before "
                          f"another worker on the store takes it over (default {DEFAULT_LEASE_SECONDS:g})")
    run.add_argument("--deterministic", nargs="?", const="error", choices=("error", "warn"),
                     help="deterministic algorithms and seeds, for bit-identical reruns on one machine; an "
                          "operation without a deterministic version raises (error, the default) or warns")
    run.add_argument("--workers", type=int, default=1,
                     help="run N one-process workers at once on the store, each with its share of the CPU threads "
                          "(they split the cells through leases; default 1)")
    run.add_argument("--worker", help=argparse.SUPPRESS)  # i/n: set by --workers for each worker it starts

    results = commands.add_parser("results", help="print and export stored results; merge shard stores")
    results.add_argument("--store", type=Path, default=Path("runs/results.db"), help="results database")
    results.add_argument("--benchmark", help="only this benchmark's cells")
    results.add_argument("--csv", type=Path, help="write the table as CSV")
    results.add_argument("--markdown", type=Path, help="write the table as Markdown")
    results.add_argument("--merge", type=Path, nargs="+", default=[], help="first copy these stores' done cells in")

    report = commands.add_parser("report", help="write the HTML and Markdown report of a benchmark")
    report.add_argument("--store", type=Path, default=Path("runs/results.db"), help="results database")
    report.add_argument("--benchmark", default="default", help="benchmark name")
    report.add_argument("--output", type=Path, help="report folder (default: next to the store, per benchmark)")

    train = commands.add_parser("train", help="fit one model from a YAML config and save its checkpoint")
    train.add_argument("--config", required=True, help="YAML file or name of a shipped train config")
    train.add_argument("--output", default="runs/train", help="folder for checkpoints and logs")
    train.epilog = "Further arguments are LightningCLI overrides, e.g. --trainer.max_epochs 3."
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, overrides = parser.parse_known_args(argv)
    if overrides and args.command != "train":
        parser.error(f"unrecognized arguments: {' '.join(overrides)}")
    try:
        code = COMMANDS[args.command](args, overrides)
        sys.stdout.flush()  # here, so that a closed pipe is caught below and not at exit
        return code
    except BrokenPipeError:  # the reader went away (`medadv results | head`): stop quietly, as `cat` does
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # Python's flush at exit fails no more
        return BROKEN_PIPE
    except ConfigError as error:
        print(f"medadv {args.command}: error: {len(error.problems)} problem(s) in the config; nothing ran:",
              file=sys.stderr)
        for problem in error.problems:
            print(f"  {problem}", file=sys.stderr)
        return 2
    except (ValueError, FileNotFoundError) as error:
        print(f"medadv {args.command}: error: {error}", file=sys.stderr)
        return 2


def run_command(args: argparse.Namespace, _: Sequence[str]) -> int:
    from benchmarks.grid import resolve_config
    from benchmarks.hardware import world_size
    from benchmarks.preemption import EXIT_CODE, exit_at_once
    from benchmarks.runner import BenchmarkRunner, RunOptions
    from benchmarks.validation import validate_benchmark

    quiet_lightning()
    shard = parse_shard(args.shard)
    worker = parse_worker(args.worker)
    start = time.perf_counter()
    options = RunOptions(
        output=args.output, store=args.store, accelerator=args.accelerator, devices=args.devices,
        num_nodes=args.num_nodes, strategy=args.strategy, shard=shard, wandb=args.wandb,
        deterministic=args.deterministic, lease_seconds=args.lease_seconds, worker=worker,
    )
    ranks = world_size(options.trainer_settings)  # an impossible hardware request is one line, before anything runs
    if args.workers < 1 or (args.workers > 1 and (ranks > 1 or args.worker)):
        raise ValueError(f"--workers must be >= 1, and 1 with several devices or nodes (use --strategy ddp for "
                         f"those) or with --worker; got --workers {args.workers} with {ranks} processes")
    benchmark = validate_benchmark(resolve_config(args.config), args.profile, args.set)
    if args.dry_run:
        print_plan(benchmark, options, time.perf_counter() - start)
        return 0
    if args.workers > 1:
        return run_on_workers(args, benchmark.name, options.store_path)
    runner = BenchmarkRunner(benchmark, options)
    summary = runner.run()
    if summary.preempted:
        abandoned = f"cell {summary.abandoned} abandoned (not stored)" if summary.abandoned else "between cells"
        if runner.writer:  # rank 0 reports; other ranks exit 0, or the launcher would end rank 0 mid-report
            print(f"medadv run: stopped by SIGTERM, {abandoned}; {summary.done} cells run. Nothing done is lost: run "
                  f"the same command again to resume", file=sys.stderr)
        exit_at_once(EXIT_CODE if runner.writer else 0)
    if not runner.writer:
        return 0
    elsewhere = f", {summary.elsewhere} by other workers" if summary.elsewhere else ""
    worker_label = f" (worker {args.worker})" if args.worker else ""
    print(f"{benchmark.name}{worker_label}: {summary.done} cells run, {summary.skipped} already done{elsewhere}, "
          f"{len(summary.failed)} failed of {summary.cells} in {summary.seconds:.0f} s")
    for failure in summary.failed:
        print(f"  failed: {failure}", file=sys.stderr)
    if args.worker:  # the run that started the workers prints the results and writes the report
        return 1 if summary.failed else 0
    print_results(options.store_path, benchmark.name)
    if not args.no_report:
        write_report(options.store_path, benchmark.name, args.output / benchmark.name)
    return 1 if summary.failed else 0


def parse_worker(text: str | None) -> tuple[int, int]:
    """``i/n`` from ``--worker`` (set by ``--workers`` for the workers it starts), else (0, 1)."""
    return (0, 1) if text is None else index_of(text, "--worker")


def worker_argv(args: argparse.Namespace) -> list[str]:
    """The `medadv run` options of ``args`` that every worker of ``--workers`` runs with (all but --workers,
    --worker, --dry-run and --no-report: the workers never write the report)."""
    argv = ["run", "--config", args.config, "--output", str(args.output), "--accelerator", args.accelerator,
            "--devices", str(args.devices), "--num-nodes", str(args.num_nodes), "--strategy", args.strategy,
            "--lease-seconds", repr(args.lease_seconds)]
    argv += [part for profile in args.profile for part in ("--profile", profile)]
    argv += [part for setting in args.set for part in ("--set", setting)]
    argv += ["--store", str(args.store)] if args.store else []
    argv += ["--shard", args.shard] if args.shard else []
    argv += ["--wandb"] if args.wandb else []
    argv += ["--deterministic", args.deterministic] if args.deterministic else []
    return argv


def run_on_workers(args: argparse.Namespace, benchmark: str, store: Path) -> int:
    """`medadv run --workers N`: N worker runs on the store at once (``benchmarks.workers``), then the results
    and the report of the whole grid. Exits as a run would: 143 when stopped by SIGTERM, 1 when a cell failed."""
    from benchmarks.preemption import EXIT_CODE
    from benchmarks.workers import run_workers, threads_per_worker, worker_command

    start = time.perf_counter()
    count = args.workers
    codes, signalled = run_workers([worker_command(worker_argv(args), index, count) for index in range(count)],
                                   threads_per_worker(count))
    if signalled or EXIT_CODE in codes:
        print("medadv run: stopped by SIGTERM; nothing done is lost: run the same command again to resume",
              file=sys.stderr)
        return EXIT_CODE
    print(f"{benchmark}: {count} workers finished in {time.perf_counter() - start:.0f} s")
    print_results(store, benchmark)
    if not args.no_report:
        write_report(store, benchmark, args.output / benchmark)
    return max(codes)


def print_plan(benchmark: Benchmark, options: RunOptions, seconds: float) -> None:
    """What `medadv run` would do after its checks (``seconds``): the shard's cells in run order, each done
    or to run, and the models it would train or load. Reads the store if it exists; writes nothing."""
    from benchmarks.grid import select_shard
    from benchmarks.model_cache import checkpoint_path
    from benchmarks.runner import pending_cells
    from benchmarks.store import ResultsStore

    finished: dict[str, str] = {}
    if options.store_path.is_file():
        with ResultsStore(options.store_path) as store:
            finished = store.finished()
    cells = select_shard(benchmark.cells, *options.shard)
    pending, total = pending_cells(benchmark, finished, options.shard)
    to_run = {cell.key for cell in pending}
    models = {checkpoint_path(spec, options.output / "models") for cell in pending for spec in cell.models}
    cached = sum(path.is_file() for path in models)
    print(f"{benchmark.name}: config checked in {seconds:.1f} s; shard {options.shard[0]}/{options.shard[1]}: "
          f"{total} cells, {total - len(to_run)} done, {len(to_run)} to run; models: {len(models) - cached} "
          f"to train, {cached} cached (dry run: nothing was run)")
    for cell in cells:
        print(f"  {'to run' if cell.key in to_run else 'done':6}  {cell.key}")


def quiet_lightning() -> None:
    """Keep Lightning's per-trainer info lines (devices, tips) out of the progress display, and its advice
    to sync epoch-level logs under DDP: the evaluation callbacks log values their metrics already reduced."""
    for name in ("lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=".*when logging on epoch level in distributed setting")
    warnings.filterwarnings("ignore", message="Experiment logs directory .* exists and is not empty")  # a redone cell
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)` is deprecated")  # Lightning 2.6
    warnings.filterwarnings("ignore", message=".*smaller than the logging interval")  # small data sets log per epoch


def results_command(args: argparse.Namespace, _: Sequence[str]) -> int:
    from benchmarks.store import ResultsStore, check_output

    protected = stores_of(args.store, args.merge)
    if args.csv:  # checked before the merge writes anything; the exports check again
        check_output(args.csv, protected)
    if args.markdown:
        check_output(args.markdown, {**protected, "the --csv output": [args.csv] if args.csv else []})
    if args.merge:
        with ResultsStore(args.store) as store:
            copied = store.merge(args.merge)
        print(f"merged {copied} cells from {len(args.merge)} stores into {args.store}")
    elif not args.store.exists():
        raise FileNotFoundError(f"results store {args.store} does not exist (run `medadv run` first)")
    print_results(args.store, args.benchmark, args.csv, args.markdown, args.merge)
    return 0


def report_command(args: argparse.Namespace, _: Sequence[str]) -> int:
    if not args.store.exists():
        raise FileNotFoundError(f"results store {args.store} does not exist (run `medadv run` first)")
    write_report(args.store, args.benchmark, args.output or args.store.parent / args.benchmark)
    return 0


def train_command(args: argparse.Namespace, overrides: Sequence[str]) -> int:
    from benchmarks.grid import resolve_config
    from benchmarks.training import print_metrics, train_from_config

    result = train_from_config(resolve_config(args.config, "train"), Path(args.output), overrides)
    print_metrics({result.name: result.metrics})
    print(f"checkpoint: {result.checkpoint}")
    return 0


def print_results(store_path: Path, benchmark: str | None, csv: Path | None = None,
                  markdown: Path | None = None, merged: Sequence[Path] = ()) -> None:
    """Print the store's done cells; export them to ``csv``/``markdown``, never over the store or ``merged``."""
    from rich.console import Console
    from rich.table import Table

    from benchmarks.store import ResultsStore
    from benchmarks.tables import entry_text, export_csv, export_markdown, headline_tables, results_table

    with ResultsStore(store_path) as store:
        records = store.records(benchmark)
        headlines = headline_tables(records, store.sample_scores)
    listing = results_table(records)
    listing = replace(listing, title=f"{listing.title}: {benchmark or 'all benchmarks'} ({len(records)} cells)")
    console = Console(width=160)
    for table in (*headlines, listing):  # the worst case over attacks first: the numbers to quote
        shown = Table(title=table.title, caption=table.note or None)
        for column in table.header:
            shown.add_column(column)
        for row in table.rows:
            shown.add_row(*map(entry_text, row))
        console.print(shown)
    protected = stores_of(store_path, merged)
    if csv:
        export_csv(records, csv, protected)
        print(f"wrote {csv}")
    if markdown:
        export_markdown(records, markdown, protected)
        print(f"wrote {markdown}")


def stores_of(store: Path, merged: Sequence[Path] = ()) -> dict[str, Path | Sequence[Path]]:
    """The stores a command reads or writes, by description: what its exports must never overwrite."""
    return {"the results store": store, "a merged store": merged}


def write_report(store_path: Path, benchmark: str, folder: Path) -> None:
    from benchmarks.report import write_report as write
    from benchmarks.store import ResultsStore

    with ResultsStore(store_path) as store:
        html, markdown = write(store, benchmark, folder)
    print(f"report: {html} and {markdown}")


COMMANDS = {"run": run_command, "results": results_command, "report": report_command, "train": train_command}


if __name__ == "__main__":
    sys.exit(main())
