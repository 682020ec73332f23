"""The run display: in a log (no terminal) one line per finished cell, counting the skipped ones."""

import io

from rich.console import Console

from benchmarks.progress import CellProgress


def test_log_lines_count_skipped_and_finished_cells():
    output = io.StringIO()
    with CellProgress(total=5, skipped=2, console=Console(file=output, force_terminal=False, width=200)) as progress:
        progress.started("b/d/m/pgd/8_255/seed0")
        progress.finished("b/d/m/pgd/8_255/seed0", "done", 1.5)
        progress.finished("b/d/m/fgsm/8_255/seed0", "failed", 0.2)
    lines = output.getvalue().splitlines()
    assert lines[0] == "2 of 5 cells already done: skipped"
    assert lines[1].startswith("[3/5] done") and lines[1].endswith("b/d/m/pgd/8_255/seed0")
    assert lines[2].startswith("[4/5] failed")
    assert progress.failed == 1
