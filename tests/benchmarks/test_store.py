"""The SQLite results store: status transitions, atomic finish with examples, merging shard stores."""

from __future__ import annotations

import dataclasses
import sqlite3

import pytest

from benchmarks.store import CellRecord, ResultsStore


def record(key: str, status: str = "running", finished_at: float | None = None, **metrics: float) -> CellRecord:
    return CellRecord(key, "b", "hash", "attack", "d", "m", "pgd", "8_255", 0, status, metrics=metrics,
                      finished_at=finished_at)


def test_running_then_done_replaces_the_row(tmp_path):
    with ResultsStore(tmp_path / "r.db") as store:
        store.start(record("a"))
        assert store.finished() == {}
        assert [r.status for r in store.records(status=None)] == ["running"]
        store.finish(record("a", "done", 1.0, acc=0.5), [("first", b"\x89PNG")])
        (done,) = store.records()
        assert done.metrics == {"acc": 0.5}
        assert store.finished() == {"a": "hash"}
        assert [(e.caption, e.png) for e in store.examples("a")] == [("first", b"\x89PNG")]


def test_a_failed_finish_leaves_the_previous_row(tmp_path):
    with ResultsStore(tmp_path / "r.db") as store:
        store.start(record("a"))
        duplicate_examples = [("x", b"1"), ("y", b"2")]
        broken = dataclasses.replace(record("a", "done"), status="bogus")  # violates the status CHECK
        with pytest.raises(sqlite3.IntegrityError):
            store.finish(broken, duplicate_examples)
        assert [r.status for r in store.records(status=None)] == ["running"]
        assert store.examples("a") == []


def test_failures_of_one_cell_from_two_ranks_keep_both_errors_and_a_new_start_clears_them(tmp_path):
    with ResultsStore(tmp_path / "r.db") as store:
        store.start(record("a"))
        store.finish(dataclasses.replace(record("a", "failed"), error="rank 1: out of memory"))
        store.finish(dataclasses.replace(record("a", "failed"), error="rank 0: connection closed"))
        (failed,) = store.records(status="failed")
        assert failed.error == "rank 1: out of memory\nrank 0: connection closed"
        store.start(record("a"))
        store.finish(dataclasses.replace(record("a", "failed"), error="rank 0: again"))
        assert store.records(status="failed")[0].error == "rank 0: again"


def test_rerunning_a_cell_drops_its_old_examples(tmp_path):
    with ResultsStore(tmp_path / "r.db") as store:
        store.finish(record("a", "done", 1.0), [("old", b"1"), ("old2", b"2")])
        store.start(record("a"))
        store.finish(record("a", "done", 2.0), [("new", b"3")])
        assert [e.caption for e in store.examples("a")] == ["new"]


def test_merge_copies_done_cells_and_keeps_the_latest(tmp_path):
    with ResultsStore(tmp_path / "one.db") as one, ResultsStore(tmp_path / "two.db") as two:
        one.finish(record("a", "done", 1.0, acc=0.1))
        two.finish(record("a", "done", 2.0, acc=0.2), [("ex", b"png")])
        two.finish(record("b", "done", 1.0, acc=0.3))
        two.start(record("c"))
    with ResultsStore(tmp_path / "all.db") as merged:
        assert merged.merge([tmp_path / "one.db", tmp_path / "two.db"]) == 3
        assert {r.key: r.metrics["acc"] for r in merged.records()} == {"a": 0.2, "b": 0.3}
        assert [e.caption for e in merged.examples("a")] == ["ex"]
        assert merged.merge([tmp_path / "two.db"]) == 0
        with pytest.raises(FileNotFoundError, match="missing.db"):
            merged.merge([tmp_path / "missing.db"])
