"""Read an offline W&B run back from its ``run-<id>.wandb`` file (wandb >= 0.31 has no reader of its own).

The file is a LevelDB-style log: a 7-byte header (``:W&B``, magic 0xBEE1, version), then 32 KiB blocks
of records, each with a 7-byte header (CRC32, length, type FULL=1 FIRST=2 MIDDLE=3 LAST=4) and a
payload that is a serialised ``wandb_internal_pb2.Record``.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

FILE_HEADER = 7
BLOCK = 32 * 1024
RECORD_HEADER = 7
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def record_payloads(path: Path) -> Iterator[bytes]:
    """Payloads of the complete records of a ``.wandb`` file, in order."""
    data = path.read_bytes()
    if data[:4] != b":W&B":
        raise ValueError(f"{path}: not a W&B run file (header {data[:4]!r})")
    offset, pending = FILE_HEADER, b""
    while offset + RECORD_HEADER <= len(data):
        left_in_block = BLOCK - offset % BLOCK
        if left_in_block < RECORD_HEADER:
            offset += left_in_block
            continue
        _, length, kind = struct.unpack("<IHB", data[offset : offset + RECORD_HEADER])
        if kind == 0 and length == 0:
            offset += left_in_block
            continue
        chunk = data[offset + RECORD_HEADER : offset + RECORD_HEADER + length]
        offset += RECORD_HEADER + length
        if kind == FULL:
            yield chunk
        elif kind == FIRST:
            pending = chunk
        elif kind == MIDDLE:
            pending += chunk
        elif kind == LAST:
            yield pending + chunk
            pending = b""


def _key(item: Any) -> str:
    return "/".join(item.nested_key) if item.nested_key else item.key


@dataclass
class OfflineRun:
    """What a run logged: config, summary, history rows, and run metadata (group, job_type, tags)."""

    config: dict[str, Any] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    group: str = ""
    job_type: str = ""
    tags: list[str] = field(default_factory=list)


def read_offline_run(run_dir: Path) -> OfflineRun:
    """Parse ``run_dir/run-*.wandb`` (call ``wandb.finish()`` first)."""
    from wandb.proto import wandb_internal_pb2

    files = sorted(Path(run_dir).glob("run-*.wandb"))
    if not files:
        raise FileNotFoundError(f"{run_dir}: no run-*.wandb file")
    run = OfflineRun()
    for payload in record_payloads(files[0]):
        record = wandb_internal_pb2.Record()
        record.ParseFromString(payload)
        kind = record.WhichOneof("record_type")
        if kind == "run":
            run.group, run.job_type = record.run.run_group, record.run.job_type
            run.tags = list(record.run.tags)
            run.config |= {_key(item): json.loads(item.value_json) for item in record.run.config.update}
        elif kind == "config":
            run.config |= {_key(item): json.loads(item.value_json) for item in record.config.update}
        elif kind == "history":
            run.history.append({_key(item): json.loads(item.value_json) for item in record.history.item})
        elif kind == "summary":
            run.summary |= {_key(item): json.loads(item.value_json) for item in record.summary.update}
    return run
