"""The results store: one SQLite row per benchmark cell, written transactionally, so a run killed at any
moment resumes by redoing exactly the cells that are not ``done`` under their current config hash."""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

SCHEMA = """
CREATE TABLE IF NOT EXISTS cells (
    key TEXT PRIMARY KEY,
    benchmark TEXT NOT NULL,
    config_hash TEXT NOT NULL,
    kind TEXT NOT NULL,
    dataset TEXT NOT NULL,
    model TEXT NOT NULL,
    attack TEXT NOT NULL,
    budget TEXT NOT NULL,
    seed INTEGER NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('running', 'done', 'failed')),
    metrics TEXT NOT NULL DEFAULT '{}',
    settings TEXT NOT NULL DEFAULT '{}',
    versions TEXT NOT NULL DEFAULT '{}',
    seconds REAL,
    host TEXT NOT NULL DEFAULT '',
    error TEXT NOT NULL DEFAULT '',
    started_at REAL,
    finished_at REAL
);
CREATE TABLE IF NOT EXISTS examples (
    key TEXT NOT NULL REFERENCES cells(key) ON DELETE CASCADE,
    position INTEGER NOT NULL,
    caption TEXT NOT NULL,
    png BLOB NOT NULL,
    PRIMARY KEY (key, position)
);
"""
CELL_COLUMNS = (
    "key", "benchmark", "config_hash", "kind", "dataset", "model", "attack", "budget", "seed", "status",
    "metrics", "settings", "versions", "seconds", "host", "error", "started_at", "finished_at",
)
JSON_COLUMNS = ("metrics", "settings", "versions")


@dataclass(frozen=True)
class CellRecord:
    """One stored cell: where it sits in the grid, its status and, once done, its metrics."""

    key: str
    benchmark: str
    config_hash: str
    kind: str
    dataset: str
    model: str
    attack: str
    budget: str
    seed: int
    status: str
    metrics: dict[str, float] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)
    seconds: float | None = None
    host: str = ""
    error: str = ""
    started_at: float | None = None
    finished_at: float | None = None

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> CellRecord:
        values = {name: row[name] for name in CELL_COLUMNS}
        for name in JSON_COLUMNS:
            values[name] = json.loads(values[name])
        return cls(**values)

    def as_row(self) -> tuple[Any, ...]:
        return tuple(
            json.dumps(getattr(self, name), sort_keys=True) if name in JSON_COLUMNS else getattr(self, name)
            for name in CELL_COLUMNS
        )


@dataclass(frozen=True)
class StoredExample:
    """One example image of a cell (a PNG grid of clean, perturbation and adversarial) with its caption."""

    key: str
    position: int
    caption: str
    png: bytes


class ResultsStore:
    """SQLite results of one or more benchmarks. Every write is one transaction; WAL journaling and a
    busy timeout let several shard processes on one machine write to the same file."""

    def __init__(self, path: Path | str, timeout: float = 120.0) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.connection = sqlite3.connect(self.path, timeout=timeout, isolation_level=None)
        self.connection.row_factory = sqlite3.Row
        self.connection.execute("PRAGMA journal_mode=WAL")
        self.connection.execute("PRAGMA synchronous=FULL")
        self.connection.execute("PRAGMA foreign_keys=ON")
        with self.transaction() as cursor:
            for statement in _statements(SCHEMA):
                cursor.execute(statement)

    def close(self) -> None:
        self.connection.close()

    def __enter__(self) -> ResultsStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Cursor]:
        """An immediate (write-locking) transaction, committed on success and rolled back on error."""
        cursor = self.connection.cursor()
        cursor.execute("BEGIN IMMEDIATE")
        try:
            yield cursor
        except BaseException:
            cursor.execute("ROLLBACK")
            raise
        cursor.execute("COMMIT")

    def finished(self) -> dict[str, str]:
        """Config hash of every ``done`` cell, by key: what a resumed run may skip."""
        rows = self.connection.execute("SELECT key, config_hash FROM cells WHERE status = 'done'")
        return {row["key"]: row["config_hash"] for row in rows}

    def start(self, cell: CellRecord) -> None:
        """Record a cell as running (replacing an unfinished or outdated row of the same key)."""
        with self.transaction() as cursor:
            cursor.execute("DELETE FROM cells WHERE key = ?", (cell.key,))
            _insert(cursor, cell)

    def finish(self, cell: CellRecord, examples: Sequence[tuple[str, bytes]] = ()) -> None:
        """Record a cell as done or failed, with its examples, in one transaction. A failure recorded over
        a failed row keeps the earlier error first (several ranks of one run report one cell)."""
        with self.transaction() as cursor:
            if cell.status == "failed":
                row = cursor.execute("SELECT error FROM cells WHERE key = ? AND status = 'failed'", (cell.key,))
                earlier = row.fetchone()
                if earlier:
                    cell = replace(cell, error=f"{earlier['error']}\n{cell.error}")
            cursor.execute("DELETE FROM cells WHERE key = ?", (cell.key,))
            _insert(cursor, cell)
            cursor.executemany(
                "INSERT INTO examples (key, position, caption, png) VALUES (?, ?, ?, ?)",
                [(cell.key, position, caption, png) for position, (caption, png) in enumerate(examples)],
            )

    def records(self, benchmark: str | None = None, status: str | None = "done") -> list[CellRecord]:
        """Stored cells in key order, optionally of one benchmark and one status (None: any)."""
        clauses, values = [], []
        for column, value in (("benchmark", benchmark), ("status", status)):
            if value is not None:
                clauses.append(f"{column} = ?")
                values.append(value)
        where = f" WHERE {' AND '.join(clauses)}" if clauses else ""
        rows = self.connection.execute(f"SELECT * FROM cells{where} ORDER BY key", values)
        return [CellRecord.from_row(row) for row in rows]

    def examples(self, key: str) -> list[StoredExample]:
        rows = self.connection.execute(
            "SELECT key, position, caption, png FROM examples WHERE key = ? ORDER BY position", (key,)
        )
        return [StoredExample(row["key"], row["position"], row["caption"], bytes(row["png"])) for row in rows]

    def merge(self, others: Iterable[Path]) -> int:
        """Copy the ``done`` cells (and their examples) of other stores into this one; returns how many.
        A cell present in several stores keeps the latest finished one."""
        copied = 0
        for path in others:
            if not Path(path).is_file():
                raise FileNotFoundError(f"results store {path} does not exist")
            with ResultsStore(path) as other:
                for record in other.records(status="done"):
                    if self._newer_or_equal(record):
                        continue
                    self.finish(record, [(e.caption, e.png) for e in other.examples(record.key)])
                    copied += 1
        return copied

    def _newer_or_equal(self, record: CellRecord) -> bool:
        row = self.connection.execute(
            "SELECT finished_at FROM cells WHERE key = ? AND status = 'done'", (record.key,)
        ).fetchone()
        return row is not None and (row["finished_at"] or 0) >= (record.finished_at or 0)


def _statements(script: str) -> list[str]:
    return [statement for statement in script.split(";") if statement.strip()]


def _insert(cursor: sqlite3.Cursor, cell: CellRecord) -> None:
    placeholders = ", ".join("?" for _ in CELL_COLUMNS)
    cursor.execute(f"INSERT INTO cells ({', '.join(CELL_COLUMNS)}) VALUES ({placeholders})", cell.as_row())


def now() -> float:
    """Wall-clock seconds since the epoch, as stored in ``started_at``/``finished_at``."""
    return time.time()
