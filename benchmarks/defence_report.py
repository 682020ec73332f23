"""The report's view of defences (a defence is a model label of a dataset): the clean-vs-robust accuracy
trade-off, one point per defence with its 95% intervals, and the table "robust accuracy: non-adaptive vs
adaptive", where a cell counts as adaptive when its attack ran in a BPDA/EOT wrapper (``adaptive`` in its
stored settings; Athalye et al. 2018). Robust accuracy is that of the strongest attack of each kind (the
lowest mean over the cells at the budget), so a defence whose robustness only the adaptive attack removes
shows the gap."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from attacks.budgets import budget_text
from benchmarks.figures import PALETTE, Image, label_axes, new_figure, png_of
from benchmarks.store import CellRecord
from benchmarks.tables import TASK_METRICS, Summary, Table, select, summarize, task_of, unique

KINDS = ("non-adaptive", "adaptive")


def adaptive(record: CellRecord) -> bool:
    """Whether the cell's attack ran in an adaptive (BPDA/EOT) wrapper."""
    return any("adaptive" in attack.get("settings", {}) for attack in record.settings.get("attacks", []))


@dataclass(frozen=True)
class DefenceRow:
    """One defence at one budget: clean score, and the strongest attack of each kind with its score."""

    defence: str
    clean: Summary | None
    strongest: dict[str, tuple[str, Summary]]

    def robust(self) -> Summary | None:
        """The lowest score over both kinds: the defence's robust accuracy as far as measured."""
        scores = [summary for _, summary in self.strongest.values()]
        return min(scores, key=lambda summary: summary.mean) if scores else None


def defence_rows(records: Sequence[CellRecord], metric: str) -> list[DefenceRow]:
    """A row per model label of ``records`` (attack cells of one dataset at one budget), in grid order."""
    rows = []
    for model in unique(record.model for record in records):
        of_model = select(records, model=model)
        strongest = {}
        for kind in KINDS:
            cells = [record for record in of_model if adaptive(record) == (kind == "adaptive")]
            scored = [(attack, summarize(select(cells, attack=attack), f"adv/{metric}"))
                      for attack in unique(record.attack for record in cells)]
            found = [(attack, summary) for attack, summary in scored if summary is not None]
            if found:
                strongest[kind] = min(found, key=lambda pair: pair[1].mean)
        one_attack = select(of_model, attack=of_model[0].attack)  # every attack cell saw the same clean images
        rows.append(DefenceRow(model, summarize(one_attack, f"clean/{metric}"), strongest))
    return rows


def robust_table(rows: Sequence[DefenceRow], metric: str, title: str) -> Table:
    """Clean score, then per kind the strongest attack and its score."""
    header = ("defence", f"clean {metric}", *(f"{kind} {column}" for kind in KINDS for column in ("attack", metric)))
    body = tuple(
        (row.defence, row.clean,
         *(value for kind in KINDS for value in (row.strongest[kind] if kind in row.strongest else ("–", None))))
        for row in rows
    )
    note = ("Strongest attack of each kind at this budget (lowest mean); adaptive: the attack ran through BPDA or "
            "EOT (Athalye et al. 2018). A large gap means the defence's non-adaptive robustness was obfuscation.")
    return Table(title, header, body, note)


def tradeoff_plot(rows: Sequence[DefenceRow], metric: str, title: str) -> Image | None:
    """Robust against clean score, one labelled point per defence, 95% intervals as error bars."""
    points = [(row, row.clean, row.robust()) for row in rows if row.clean is not None and row.robust() is not None]
    if not points:
        return None
    figure, (ax,) = new_figure(1, width=5.5, height=4.2)
    for index, (row, clean, robust) in enumerate(points):
        ax.errorbar(clean.mean, robust.mean, xerr=error_bar(clean), yerr=error_bar(robust), fmt="o", capsize=3,
                    color=PALETTE[index % len(PALETTE)], label=row.defence)
    label_axes(ax, f"clean {metric}", f"robust {metric} (strongest attack)")
    ax.set_title(title, fontsize=9)
    caption = ("One point per defence: clean against robust score under the strongest attack, adaptive ones "
               "included; bars: 95% intervals where the cells stored them.")
    return Image(title, png_of(figure), caption)


def error_bar(summary: Summary) -> list[list[float]] | None:
    """The interval of ``summary`` as matplotlib's asymmetric error (below, above the mean)."""
    if summary.interval is None:
        return None
    low, high = summary.interval
    return [[max(0.0, summary.mean - low)], [max(0.0, high - summary.mean)]]


def defence_blocks(records: Sequence[CellRecord]) -> list[Table | Image]:
    """The table and trade-off plot per budget of one dataset's attack cells; none without adaptive cells
    (a benchmark that tests no defence)."""
    if not any(adaptive(record) for record in records):
        return []
    metric = TASK_METRICS.get(task_of(records) or "", ("accuracy",))[0]
    blocks: list[Table | Image] = []
    for budget in unique(record.budget for record in records):
        rows = defence_rows(select(records, budget=budget), metric)
        at = f"at {budget_text(budget)}"
        blocks.append(robust_table(rows, metric, f"Robust {metric}: non-adaptive vs adaptive, {at}"))
        plot = tradeoff_plot(rows, metric, f"Clean vs robust {metric} per defence, {at}")
        if plot is not None:
            blocks.append(plot)
    return blocks
