"""The live display of a benchmark run: cells done, running and left, with elapsed time and ETA."""

from __future__ import annotations

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


class CellProgress:
    """A rich progress bar over a shard's cells on a terminal; one plain line per finished cell in logs and from
    each worker of `medadv run --workers` (``label`` names it)."""

    def __init__(
        self, total: int, skipped: int, enabled: bool = True, console: Console | None = None, label: str = ""
    ) -> None:
        self.console = console or Console()
        self.label = label  # before each plain line: which worker of `medadv run --workers` wrote it
        self.enabled = enabled
        self.live = enabled and self.console.is_terminal and not label  # workers sharing a terminal: plain lines
        self.total, self.skipped, self.failed = total, skipped, 0
        self.progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[state]}"),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=self.console,
            disable=not self.live,
        )
        # only the cells this run does: skipped ones would make rich's ETA think the first cells were instant
        self.task = self.progress.add_task("cells to run", total=total - skipped, state="")

    def __enter__(self) -> CellProgress:
        self.progress.start()
        if self.enabled and self.skipped:
            self.console.print(f"{self.skipped} of {self.total} cells already done: skipped")
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def started(self, key: str) -> None:
        self.progress.update(self.task, state=f"running {key}")

    def finished(self, key: str, status: str, seconds: float) -> None:
        self.failed += status != "done"
        self.progress.update(self.task, advance=1, state=f"{self.failed} failed" if self.failed else "")
        if self.enabled and not self.live:
            done = self.skipped + int(self.progress.tasks[0].completed)
            self.console.print(f"{self.label}[{done}/{self.total}] {status:6} {seconds:7.1f} s  {key}",
                               highlight=False, soft_wrap=True)  # one line whatever the width: logs are parsed
