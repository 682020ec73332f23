"""No command of ours destroys results: exports and reports refuse to write over a store (or any SQLite file),
write atomically, and a store that is not one of ours is refused, by path, before anything is written to it."""

from __future__ import annotations

import hashlib
import os
import sqlite3
from pathlib import Path

import pytest

from benchmarks import report, tables
from benchmarks.cli import main
from benchmarks.store import SCHEMA_VERSION, CellRecord, ResultsStore, atomic_write


def make_store(path: Path, acc: float = 0.5) -> Path:
    with ResultsStore(path) as store:
        store.finish(CellRecord("demo/a", "demo", "hash", "attack", "d", "m", "pgd", "8_255", 0, "done",
                                metrics={"clean/accuracy": 0.9, "adv/accuracy": acc}, finished_at=1.0))
    return path


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def medadv(capsys, *argv: object) -> tuple[int, str]:
    """Run the CLI as a user does; returns the exit code and the last line of stderr."""
    code = main([str(arg) for arg in argv])
    lines = capsys.readouterr().err.strip().splitlines()
    return code, lines[-1] if lines else ""


def still_opens(path: Path) -> list[str]:
    with ResultsStore(path) as store:
        return [r.key for r in store.records()]


@pytest.fixture
def store(tmp_path: Path) -> Path:
    return make_store(tmp_path / "results.db")


@pytest.mark.parametrize("flag", ["--csv", "--markdown"])
@pytest.mark.parametrize("alias", ["itself", "relative", "symlink", "hardlink"])
def test_exporting_onto_the_store_is_refused_and_leaves_it_intact(store, flag, alias, capsys, monkeypatch):
    target = {"itself": store, "relative": Path("sub/../results.db"), "symlink": store.with_name("link"),
              "hardlink": store.with_name("hard")}[alias]
    monkeypatch.chdir(store.parent)
    (store.parent / "sub").mkdir()
    if alias == "symlink":
        target.symlink_to(store)
    elif alias == "hardlink":
        os.link(store, target)
    before = digest(store)
    code, error = medadv(capsys, "results", "--store", store, flag, target)
    assert code == 2
    assert f"refusing to write {target}: it is the results store {store}" in error
    assert digest(store) == before
    assert still_opens(store) == ["demo/a"]


def test_exporting_onto_a_merge_input_or_another_store_is_refused_before_merging(store, tmp_path, capsys):
    other = make_store(tmp_path / "shard.db", acc=0.25)
    unrelated = make_store(tmp_path / "elsewhere.db")
    before = {path: digest(path) for path in (store, other, unrelated)}
    code, error = medadv(capsys, "results", "--store", store, "--merge", other, "--csv", other)
    assert (code, error) == (2, f"medadv results: error: refusing to write {other}: it is a merged store {other}")
    code, error = medadv(capsys, "results", "--store", store, "--markdown", unrelated)
    assert code == 2 and f"refusing to write {unrelated}: it is an SQLite database" in error
    code, error = medadv(capsys, "results", "--store", store, "--markdown", f"{store}-wal")
    assert code == 2 and "it is the wal file of the results store" in error
    code, error = medadv(capsys, "results", "--store", store, "--csv", tmp_path / "t", "--markdown", tmp_path / "t")
    assert code == 2 and "it is the --csv output" in error
    assert {path: digest(path) for path in before} == before


def test_exporting_to_a_folder_or_into_a_missing_folder_is_refused(store, tmp_path, capsys):
    (tmp_path / "folder").mkdir()
    code, error = medadv(capsys, "results", "--store", store, "--csv", tmp_path / "folder")
    assert (code, error) == (2, f"medadv results: error: refusing to write {tmp_path / 'folder'}: it is a folder")
    missing = tmp_path / "no" / "such" / "x.md"
    code, error = medadv(capsys, "results", "--store", store, "--markdown", missing)
    assert code == 2
    assert error == f"medadv results: error: cannot write {missing}: folder {missing.parent} does not exist"
    assert not (tmp_path / "no").exists()


def test_exports_replace_an_old_file_whole(store, tmp_path, capsys):
    csv_path, markdown_path = tmp_path / "out.csv", tmp_path / "out.md"
    csv_path.write_text("old\n")
    assert medadv(capsys, "results", "--store", store, "--csv", csv_path, "--markdown", markdown_path) == (0, "")
    assert csv_path.read_text().startswith("kind,dataset,model,attack")
    assert markdown_path.read_text().startswith("| ")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.csv", "out.md", "results.db"]
    assert csv_path.stat().st_mode & 0o777 == 0o666 & ~current_umask()


def current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_a_crash_during_an_export_leaves_the_old_file_and_no_temporary(store, tmp_path, monkeypatch):
    with ResultsStore(store) as opened:
        records = opened.records()
    rows = tables.result_rows(records)

    def rows_then_crash(_):
        yield from rows
        raise KeyboardInterrupt  # killed after the header and the rows went to the file

    monkeypatch.setattr(tables, "result_rows", rows_then_crash)
    target = tmp_path / "out.csv"
    target.write_text("old export\n")
    with pytest.raises(KeyboardInterrupt):
        tables.export_csv(records, target)
    assert target.read_text() == "old export\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.csv", "results.db"]

    with pytest.raises(OSError, match="disk full"), atomic_write(tmp_path / "new.md") as file:
        file.write("half a ta")
        raise OSError("disk full")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.csv", "results.db"]


def test_a_crash_while_writing_the_report_leaves_the_old_report(store, tmp_path, monkeypatch):
    folder = tmp_path / "report"
    folder.mkdir()
    (folder / "report.md").write_text("old report\n")

    def crash(*_):
        raise RuntimeError("killed")

    monkeypatch.setattr(report, "render_markdown", crash)
    with ResultsStore(store) as opened, pytest.raises(RuntimeError, match="killed"):
        report.write_report(opened, "demo", folder)
    assert (folder / "report.md").read_text() == "old report\n"
    assert sorted(p.name for p in folder.iterdir()) == ["report.html", "report.md"]


@pytest.mark.parametrize("case", ["output is the store", "benchmark named like the store", "store named report.html",
                                  "store as a figure", "figures is the store"])
def test_the_report_never_writes_over_the_store(tmp_path, case, capsys):
    store, argv = tmp_path / "results.db", ["--benchmark", "demo"]
    if case == "output is the store":
        argv += ["--output", store]
    elif case == "benchmark named like the store":
        argv = ["--benchmark", "results.db"]
    elif case == "store named report.html":
        store, argv = tmp_path / "report.html", argv + ["--output", tmp_path]
    elif case == "store as a figure":
        store, argv = tmp_path / "figures" / "figure-001.png", argv + ["--output", tmp_path]
        store.parent.mkdir()
    else:
        store, argv = tmp_path / "figures", argv + ["--output", tmp_path]
    make_store(store)
    if case == "benchmark named like the store":
        with sqlite3.connect(store) as connection:
            connection.execute("UPDATE cells SET benchmark = 'results.db'")
        connection.close()
    before = digest(store)
    code, error = medadv(capsys, "report", "--store", store, *argv)
    assert code == 2
    assert error.startswith("medadv report: error: refusing to write") and f"it is the results store {store}" in error
    assert digest(store) == before
    assert not (tmp_path / "report.md").exists()


def test_a_report_next_to_the_store_is_written(store, capsys):
    assert medadv(capsys, "report", "--store", store, "--benchmark", "demo") == (0, "")
    assert sorted(p.name for p in (store.parent / "demo").iterdir()) == ["figures", "report.html", "report.md"]
    assert still_opens(store) == ["demo/a"]


def test_what_is_not_a_store_is_refused_by_path_before_anything_is_written(tmp_path, capsys):
    text, folder, future, foreign = (tmp_path / name for name in ("notes.txt", "runs", "future.db", "other.db"))
    text.write_text("my notes\n")
    folder.mkdir()
    for path, setup in ((future, "CREATE TABLE cells (key TEXT); PRAGMA user_version = 7"),
                        (foreign, "CREATE TABLE other (x)")):
        connection = sqlite3.connect(path)
        connection.executescript(setup)
        connection.close()
    expected = {
        text: f"results store {text} is not an SQLite database",
        folder: f"results store {folder} is a folder, not an SQLite database",
        future: f"results store {future} has schema version 7; this medadv reads version {SCHEMA_VERSION}",
        foreign: f"results store {foreign} is an SQLite database without a cells table",
    }
    files = [text, future, foreign]
    before = {path: digest(path) for path in files}
    for path, message in expected.items():
        with pytest.raises(ValueError, match="^" + message.replace("(", r"\(").replace(")", r"\)")):
            ResultsStore(path)
        for argv in (["results", "--store", path], ["report", "--store", path],
                     ["results", "--store", tmp_path / "merged.db", "--merge", path]):
            code, error = medadv(capsys, *argv)
            assert code == 2 and message in error, (argv, error)
    assert {path: digest(path) for path in files} == before
    names = {p.name for p in tmp_path.iterdir()} - {"merged.db"}  # the --merge target, created empty
    assert names == {"future.db", "notes.txt", "other.db", "runs"}
    assert list(folder.iterdir()) == []


def test_merging_a_store_into_itself_is_refused(store, capsys):
    before = digest(store)
    code, error = medadv(capsys, "results", "--store", store, "--merge", store)
    assert (code, error) == (2, f"medadv results: error: cannot merge results store {store} into itself")
    assert digest(store) == before


def test_a_new_store_is_marked_with_the_schema_version_and_an_unmarked_older_one_opens(tmp_path):
    with ResultsStore(tmp_path / "new.db") as store:
        assert store.connection.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    older = make_store(tmp_path / "older.db")
    connection = sqlite3.connect(older)
    connection.execute("PRAGMA user_version = 0")
    connection.close()
    assert still_opens(older) == ["demo/a"]
    with sqlite3.connect(older) as connection:
        assert connection.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    connection.close()
    empty = tmp_path / "empty.db"
    empty.touch()
    assert still_opens(empty) == []
