#!/usr/bin/env bash
# GPU check (docs/performance.md): on a CUDA machine, run the tests marked `gpu` and the speed table of
# benchmarks/attack_throughput.py (ResNet-50 at 224 px, U-Net at 256 px), in about 5-8 minutes, and write
# one JSON of the results, $OUT/gpu_check.json, beside the logs and per-model tables.
#
#   bash benchmarks/gpu_check.sh [OUT]     # from the repository root, in a venv with the project installed
#
# OUT defaults to $OUT, else ./gpu_check_out. PYTHON (default: python) picks the interpreter; BATCH (64),
# UNET_BATCH (16) and REPEATS (2) size the benchmark. Each step has its own time limit and the tables are
# written after every attack, so a step cut short keeps what it measured; the script exits non-zero when a
# step failed or timed out, after writing the JSON.
set -uo pipefail

OUT="${1:-${OUT:-gpu_check_out}}"
PYTHON="${PYTHON:-python}"
BATCH="${BATCH:-64}"
UNET_BATCH="${UNET_BATCH:-16}"
REPEATS="${REPEATS:-2}"
mkdir -p "$OUT"

if ! "$PYTHON" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "gpu_check: CUDA is not available to $PYTHON" >&2
    exit 2
fi

step() {  # step NAME SECONDS COMMAND...: run with a time limit, log to $OUT/NAME.log, keep the exit code
    local name=$1 limit=$2
    shift 2
    echo "gpu_check: $name (at most ${limit} s)"
    timeout -s KILL "$limit" "$@" >"$OUT/$name.log" 2>&1
    echo "$?" >"$OUT/$name.rc"
}

step gpu_tests 300 "$PYTHON" -m pytest -m gpu -q -p no:cacheprovider --junitxml="$OUT/gpu_tests.xml" \
    tests/attacks/test_precision.py tests/attacks/test_compiled.py tests/callbacks/test_speed_options.py
step speed_resnet50 420 "$PYTHON" -m benchmarks.attack_throughput --speed --arch resnet50 --size 224 \
    --batch "$BATCH" --repeats "$REPEATS" --json "$OUT/speed_resnet50.json"
step speed_unet 240 "$PYTHON" -m benchmarks.attack_throughput --speed --task segmentation --encoder resnet34 \
    --size 256 --batch "$UNET_BATCH" --repeats "$REPEATS" --speed-attacks pgd10 apgd_ce cw_l2 \
    --json "$OUT/speed_unet.json"

"$PYTHON" - "$OUT" <<'EOF'
"""Gather the steps' exit codes, the test outcomes (JUnit XML) and the speed tables into gpu_check.json."""
import json
import sys
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import torch

out = Path(sys.argv[1])
steps = ("gpu_tests", "speed_resnet50", "speed_unet")
report = {
    "device": torch.cuda.get_device_name(0),
    "torch": torch.__version__,
    "cuda": torch.version.cuda,
    "steps": {name: int((out / f"{name}.rc").read_text()) for name in steps},
    "tests": {},
    "speed": {},
}
junit = out / "gpu_tests.xml"
if junit.exists():
    for case in ElementTree.parse(junit).getroot().iter("testcase"):
        outcome = next((child.tag for child in case if child.tag in ("failure", "error", "skipped")), "passed")
        report["tests"][f"{case.get('classname')}::{case.get('name')}"] = {
            "outcome": outcome, "seconds": float(case.get("time", 0)),
        }
for name in steps[1:]:
    table = out / f"{name}.json"
    report["speed"][name.removeprefix("speed_")] = json.loads(table.read_text()) if table.exists() else None
(out / "gpu_check.json").write_text(json.dumps(report, indent=2))
print(f"gpu_check: wrote {out / 'gpu_check.json'}; step exit codes {report['steps']}")
sys.exit(0 if not any(report["steps"].values()) else 1)
EOF
