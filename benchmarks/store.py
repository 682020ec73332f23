"""The results store: one SQLite row per benchmark cell, written transactionally, so a run killed at any
moment resumes by redoing exactly the cells that are not ``done`` under their current config hash. Also the
two guards every file our commands write goes through: :func:`check_output` (never onto a store or another
SQLite database) and :func:`atomic_write` (a temporary file, then ``os.replace``)."""

from __future__ import annotations

import io
import json
import os
import secrets
import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import IO, Any, Literal

import numpy as np

SCHEMA_VERSION = 2  # PRAGMA user_version of a store: 2 added leases and arrays; 0: a store from before the marker
SQLITE_HEADER = b"SQLite format 3\x00"
SIDE_FILES = ("-wal", "-shm", "-journal")  # SQLite's companions of a database file, part of its data
Protected = Mapping[str, Path | str | Sequence[Path | str]]  # what must not be overwritten, by description
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
CREATE TABLE IF NOT EXISTS sample_scores (
    key TEXT NOT NULL REFERENCES cells(key) ON DELETE CASCADE,
    stream TEXT NOT NULL,
    sample_id TEXT NOT NULL,
    score REAL NOT NULL,
    PRIMARY KEY (key, stream, sample_id)
);
CREATE TABLE IF NOT EXISTS examples (
    key TEXT NOT NULL REFERENCES cells(key) ON DELETE CASCADE,
    position INTEGER NOT NULL,
    caption TEXT NOT NULL,
    png BLOB NOT NULL,
    PRIMARY KEY (key, position)
);
CREATE TABLE IF NOT EXISTS arrays (
    key TEXT NOT NULL REFERENCES cells(key) ON DELETE CASCADE,
    name TEXT NOT NULL,
    npy BLOB NOT NULL,
    PRIMARY KEY (key, name)
);
CREATE TABLE IF NOT EXISTS leases (
    key TEXT PRIMARY KEY,
    worker TEXT NOT NULL,
    heartbeat_at REAL NOT NULL,
    expires_at REAL NOT NULL
);
"""
CELL_COLUMNS = (
    "key", "benchmark", "config_hash", "kind", "dataset", "model", "attack", "budget", "seed", "status",
    "metrics", "settings", "versions", "seconds", "host", "error", "started_at", "finished_at",
)
JSON_COLUMNS = ("metrics", "settings", "versions")
SampleScores = Mapping[str, Mapping[str, float]]  # stream ("clean", "adv") -> sample id -> score
Arrays = Mapping[str, np.ndarray]  # a cell's analysis arrays by name ("landscape/losses"), stored as .npy
Claim = Literal["claimed", "held", "done", "failed"]  # what ResultsStore.claim found


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

    def __init__(self, path: Path | str, timeout: float = 120.0, checked: bool = False) -> None:
        """Open (creating or migrating) the store at ``path``. ``checked``: this process has it open already
        (a second connection, for another thread), so the file is not read outside SQLite: closing any other
        descriptor of the file would end this process's SQLite locks on it (POSIX locks are per process), and
        another process could then delete the write-ahead log under it."""
        self.path = Path(path)
        if not checked:
            check_store_file(self.path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise ValueError(f"results store {self.path}: cannot create its folder ({error})") from error
        self.connection = sqlite3.connect(self.path, timeout=timeout, isolation_level=None)
        self.connection.row_factory = sqlite3.Row
        try:
            version = check_schema(self.path, self.connection)  # reads only: nothing is written to a refused file
        except BaseException:
            self.connection.close()
            raise
        self.connection.execute("PRAGMA journal_mode=WAL")
        self.connection.execute("PRAGMA synchronous=FULL")
        self.connection.execute("PRAGMA foreign_keys=ON")
        with self.transaction() as cursor:
            for statement in _statements(SCHEMA):
                cursor.execute(statement)
            if version != SCHEMA_VERSION:
                cursor.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

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

    def claim(self, cell: CellRecord, worker: str, seconds: float, since: float, stale: Callable[[str], bool]) -> Claim:
        """Take ``cell`` (a running record) for ``worker`` with a lease of ``seconds``, in one transaction:
        ``"done"`` if it is done under its config hash, ``"failed"`` if it failed at or after ``since`` (another
        worker tried it in this round), ``"held"`` if another worker's lease is live (unexpired and not
        ``stale(worker)``), else ``"claimed"``: the lease is written and the cell recorded as running."""
        with self.transaction() as cursor:
            row = cursor.execute("SELECT status, config_hash, finished_at FROM cells WHERE key = ?", (cell.key,))
            stored = row.fetchone()
            if stored and stored["config_hash"] == cell.config_hash:
                if stored["status"] == "done":
                    return "done"
                if stored["status"] == "failed" and (stored["finished_at"] or 0) >= since:
                    return "failed"
            lease = cursor.execute("SELECT worker, expires_at FROM leases WHERE key = ?", (cell.key,)).fetchone()
            if lease and lease["worker"] != worker and lease["expires_at"] > now() and not stale(lease["worker"]):
                return "held"
            moment = now()
            cursor.execute("INSERT OR REPLACE INTO leases (key, worker, heartbeat_at, expires_at) VALUES (?, ?, ?, ?)",
                           (cell.key, worker, moment, moment + seconds))
            cursor.execute("DELETE FROM cells WHERE key = ?", (cell.key,))
            _insert(cursor, cell)
        return "claimed"

    def renew(self, worker: str, seconds: float) -> int:
        """Extend every lease of ``worker`` to ``seconds`` from now (its heartbeat); how many it holds."""
        moment = now()
        with self.transaction() as cursor:
            return cursor.execute("UPDATE leases SET heartbeat_at = ?, expires_at = ? WHERE worker = ?",
                                  (moment, moment + seconds, worker)).rowcount

    def release(self, key: str, worker: str) -> None:
        """Give up an unfinished cell: drop ``worker``'s lease and the cell's running row, so any worker (or a
        rerun) takes it at once."""
        with self.transaction() as cursor:
            cursor.execute("DELETE FROM leases WHERE key = ? AND worker = ?", (key, worker))
            cursor.execute("DELETE FROM cells WHERE key = ? AND status = 'running'", (key,))

    def leases(self) -> dict[str, str]:
        """The worker holding each leased cell, by key (expired leases included)."""
        return {row["key"]: row["worker"] for row in self.connection.execute("SELECT key, worker FROM leases")}

    def finish(
        self, cell: CellRecord, examples: Sequence[tuple[str, bytes]] = (), samples: SampleScores | None = None,
        arrays: Arrays | None = None,
    ) -> None:
        """Record a cell as done or failed, with its examples, per-sample scores (``{stream: {sample id:
        score}}``, streams ``clean`` and ``adv``) and analysis arrays (``{name: array}``), in one transaction.
        A failure recorded over a failed row keeps the earlier error first (several ranks of one run report
        one cell)."""
        with self.transaction() as cursor:
            if cell.status == "failed":
                row = cursor.execute("SELECT error FROM cells WHERE key = ? AND status = 'failed'", (cell.key,))
                earlier = row.fetchone()
                if earlier:
                    cell = replace(cell, error=f"{earlier['error']}\n{cell.error}")
            cursor.execute("DELETE FROM cells WHERE key = ?", (cell.key,))
            cursor.execute("DELETE FROM leases WHERE key = ?", (cell.key,))  # finished: no one need take it
            _insert(cursor, cell)
            cursor.executemany(
                "INSERT INTO examples (key, position, caption, png) VALUES (?, ?, ?, ?)",
                [(cell.key, position, caption, png) for position, (caption, png) in enumerate(examples)],
            )
            cursor.executemany(
                "INSERT INTO sample_scores (key, stream, sample_id, score) VALUES (?, ?, ?, ?)",
                [(cell.key, stream, sample, score) for stream, scores in (samples or {}).items()
                 for sample, score in scores.items()],
            )
            cursor.executemany("INSERT INTO arrays (key, name, npy) VALUES (?, ?, ?)",
                               [(cell.key, name, npy_bytes(array)) for name, array in (arrays or {}).items()])

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

    def arrays(self, key: str) -> dict[str, np.ndarray]:
        """``{name: array}``: the analysis arrays of one cell (empty for cells stored without them)."""
        rows = self.connection.execute("SELECT name, npy FROM arrays WHERE key = ? ORDER BY name", (key,))
        return {row["name"]: np.load(io.BytesIO(row["npy"]), allow_pickle=False) for row in rows}

    def sample_scores(self, key: str) -> SampleScores:
        """``{stream: {sample id: score}}`` of one cell (empty for cells stored without them)."""
        rows = self.connection.execute("SELECT stream, sample_id, score FROM sample_scores WHERE key = ?", (key,))
        scores: dict[str, dict[str, float]] = {}
        for row in rows:
            scores.setdefault(row["stream"], {})[row["sample_id"]] = row["score"]
        return scores

    def merge(self, others: Iterable[Path]) -> int:
        """Copy the ``done`` cells (and their examples) of other stores into this one; returns how many.
        A cell present in several stores keeps the latest finished one."""
        others = [Path(path) for path in others]
        for path in others:  # all checked before the first copy
            if not path.exists():
                raise FileNotFoundError(f"results store {path} does not exist")
            if same_file(path, self.path):
                raise ValueError(f"cannot merge results store {path} into itself")
            check_store_file(path)
        copied = 0
        for path in others:
            with ResultsStore(path) as other:
                for record in other.records(status="done"):
                    if self._newer_or_equal(record):
                        continue
                    examples = [(e.caption, e.png) for e in other.examples(record.key)]
                    self.finish(record, examples, other.sample_scores(record.key), other.arrays(record.key))
                    copied += 1
        return copied

    def _newer_or_equal(self, record: CellRecord) -> bool:
        row = self.connection.execute(
            "SELECT finished_at FROM cells WHERE key = ? AND status = 'done'", (record.key,)
        ).fetchone()
        return row is not None and (row["finished_at"] or 0) >= (record.finished_at or 0)


def npy_bytes(array: Any) -> bytes:
    """An array (or anything ``np.asarray`` takes) in NumPy's ``.npy`` format, without pickled objects."""
    buffer = io.BytesIO()
    np.save(buffer, np.asarray(array), allow_pickle=False)
    return buffer.getvalue()


def check_store_file(path: Path) -> None:
    """ValueError naming ``path`` when it exists but is not an SQLite file (a folder, a text file, a FIFO);
    a missing or empty file is fine (SQLite creates the store)."""
    if not path.exists():
        return
    if path.is_dir():
        raise ValueError(f"results store {path} is a folder, not an SQLite database")
    if not path.is_file():
        raise ValueError(f"results store {path} is not a regular file")
    if path.stat().st_size and not is_sqlite(path):
        raise ValueError(f"results store {path} is not an SQLite database")


def check_schema(path: Path, connection: sqlite3.Connection) -> int:
    """The schema version of the open database; ValueError naming ``path`` unless it is empty, a store of this
    or an older version (0: without the version marker) that has the ``cells`` table. Reads only; opening the
    store then migrates an older one (the tables it lacks are created, the marker set)."""
    try:
        version = connection.execute("PRAGMA user_version").fetchone()[0]
        tables = {row[0] for row in connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        columns = {row[1] for row in connection.execute("PRAGMA table_info(cells)")}
    except sqlite3.DatabaseError as error:
        raise ValueError(f"results store {path} is not a readable SQLite database ({error})") from error
    if not 0 <= version <= SCHEMA_VERSION:
        raise ValueError(f"results store {path} has schema version {version}; this medadv reads version "
                         f"{SCHEMA_VERSION} (a newer medadv wrote it, or it is not a results store)")
    if tables and "cells" not in tables:
        raise ValueError(f"results store {path} is an SQLite database without a cells table, not a results store")
    missing = [name for name in CELL_COLUMNS if name not in columns] if "cells" in tables else []
    if missing:
        raise ValueError(f"results store {path} has a cells table without the columns {', '.join(missing)}")
    return version


def is_sqlite(path: Path) -> bool:
    """Whether ``path`` is a file that starts with SQLite's header. Reads the file outside SQLite: never call
    it on a store this process has open (see ``ResultsStore(checked=True)``)."""
    try:
        with path.open("rb") as file:
            return file.read(len(SQLITE_HEADER)) == SQLITE_HEADER
    except OSError:
        return False


def same_file(one: Path | str, other: Path | str) -> bool:
    """Whether two paths name the same file: equal once resolved, or the same inode (hard links)."""
    one, other = Path(one), Path(other)
    if one.resolve() == other.resolve():
        return True
    try:
        return os.path.samefile(one, other)
    except OSError:
        return False


def protected_files(protected: Protected | None) -> Iterator[tuple[Path, str]]:
    """Each protected path and, for a store, SQLite's side files of it (``-wal``, ``-shm``, ``-journal``), with
    what it is in words ("the results store runs/results.db")."""
    for what, paths in (protected or {}).items():
        for path in [paths] if isinstance(paths, (str, Path)) else paths:
            yield Path(path), f"{what} {path}"
            for suffix in SIDE_FILES:
                yield Path(f"{path}{suffix}"), f"the {suffix[1:]} file of {what} {path}"


def check_output(path: Path, protected: Protected | None = None) -> None:
    """Refuse (ValueError or FileNotFoundError, naming ``path`` and why) to write a file at ``path`` when it is
    one of ``protected`` (by description: ``{"the results store": store}``, stores with their side files), an
    existing SQLite database, folder or other non-regular file, or when its folder does not exist."""
    for other, what in protected_files(protected):
        if same_file(path, other):
            raise ValueError(f"refusing to write {path}: it is {what}")
    if path.is_dir():
        raise ValueError(f"refusing to write {path}: it is a folder")
    if path.exists() and not path.is_file():
        raise ValueError(f"refusing to write {path}: it is not a regular file")
    if path.is_file() and is_sqlite(path):
        raise ValueError(f"refusing to write {path}: it is an SQLite database (a results store?)")
    if not path.parent.is_dir():
        raise FileNotFoundError(f"cannot write {path}: folder {path.parent} does not exist")


@contextmanager
def atomic_write(path: Path, mode: str = "w", **open_args: Any) -> Iterator[IO[Any]]:
    """Open a temporary file beside ``path`` for writing and move it onto ``path`` (``os.replace``) only when
    the block ends without error, so ``path`` holds either its old content or the whole new one."""
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # mode as the umask allows
    try:
        with os.fdopen(descriptor, mode, **open_args) as file:
            yield file
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def _statements(script: str) -> list[str]:
    return [statement for statement in script.split(";") if statement.strip()]


def _insert(cursor: sqlite3.Cursor, cell: CellRecord) -> None:
    placeholders = ", ".join("?" for _ in CELL_COLUMNS)
    cursor.execute(f"INSERT INTO cells ({', '.join(CELL_COLUMNS)}) VALUES ({placeholders})", cell.as_row())


def now() -> float:
    """Wall-clock seconds since the epoch, as stored in ``started_at``/``finished_at``."""
    return time.time()
