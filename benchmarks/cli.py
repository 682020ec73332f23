"""The `medadv` command line: `train` fits one model from a YAML config, `run` runs the main job.

Heavy libraries are imported inside the commands so that `medadv --help` starts fast.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

CONFIG_DIR = Path(__file__).resolve().parent / "configs"
DEFAULT_TRAIN_CONFIGS = ("synthetic_fundus", "synthetic_lung_ct", "synthetic_endoscopy")


def resolve_config(name_or_path: str, folder: str) -> Path:
    """A config path as given, or the name of a shipped config under benchmarks/configs/<folder>/."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    shipped = CONFIG_DIR / folder / f"{name_or_path.removesuffix('.yaml')}.yaml"
    if shipped.is_file():
        return shipped
    available = ", ".join(sorted(p.stem for p in (CONFIG_DIR / folder).glob("*.yaml")))
    raise FileNotFoundError(f"config {name_or_path!r} not found (shipped {folder} configs: {available})")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="medadv", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser("train", help="fit one model from a YAML config and save its checkpoint")
    train.add_argument("--config", required=True, help="YAML file or name of a shipped train config")
    train.add_argument("--output", default="runs/train", help="folder for checkpoints and logs")
    train.epilog = "Further arguments are LightningCLI overrides, e.g. --trainer.max_epochs 3."

    run = commands.add_parser("run", help="the main job: train the default models and print clean metrics")
    run.add_argument("--output", default="runs", help="folder for checkpoints and logs")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, overrides = parser.parse_known_args(argv)
    if overrides and args.command != "train":
        parser.error(f"unrecognized arguments: {' '.join(overrides)}")
    from benchmarks.training import print_metrics, train_from_config

    if args.command == "train":
        result = train_from_config(resolve_config(args.config, "train"), Path(args.output), overrides)
        print_metrics({result.name: result.metrics})
        print(f"checkpoint: {result.checkpoint}")
        return 0
    results = {}
    for name in DEFAULT_TRAIN_CONFIGS:
        result = train_from_config(resolve_config(name, "train"), Path(args.output) / "train", [])
        results[result.name] = result.metrics
    print_metrics(results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
