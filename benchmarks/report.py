"""The benchmark report: ``report.html``, one self-contained page (inline CSS, figures as inline base64 PNGs,
no scripts; it opens offline), and ``report.md`` with the same tables and the figures as PNG files under
``figures/``. Both are rendered from one list of sections built from the store's cells."""

from __future__ import annotations

import base64
import html
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from attacks.budgets import budget_text
from benchmarks.analysis_figures import landscape_comparison, model_analysis
from benchmarks.defence_report import defence_blocks
from benchmarks.figures import (
    Image,
    budget_curves,
    minimal_norm_curves,
    perturbation_bars,
    quality_scatter,
    transfer_heatmap,
)
from benchmarks.fragility_figures import fragility_blocks
from benchmarks.store import (
    CellRecord,
    Protected,
    ResultsStore,
    StoredExample,
    atomic_write,
    check_output,
    protected_files,
    same_file,
)
from benchmarks.tables import (
    TASK_METRICS,
    Summary,
    Table,
    detection_table,
    entry_text,
    in_grid_order,
    model_tables,
    select,
    task_of,
    to_markdown,
    transfer_matrices,
    transfer_overview,
    transfer_table,
    unique,
    worst_case_table,
    worst_cases,
)

ExamplesOf = Callable[[str], list[StoredExample]]
Block = Table | Image
DatasetFigures = Callable[[Sequence[CellRecord], ResultsStore], list[Image]]
# Figures across a dataset's models, after their sections: append a function to add one.
DATASET_FIGURES: list[DatasetFigures] = [lambda records, store: landscape_comparison(records, store.arrays)]
EXAMPLE_LEGENDS = {"segmentation": "; green: predicted mask", "detection": "; yellow: detected boxes (score >= 0.5)"}
STYLE = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,Helvetica,Arial,sans-serif;color:#222;line-height:1.4;
max-width:1200px;margin:0 auto;padding:1rem 2rem}
h1{margin-bottom:.2rem}h2{border-bottom:2px solid #dde;padding-bottom:.2rem;margin-top:2.5rem}h3{margin-top:2rem}
nav ul{font-size:.9rem}nav li.level3{margin-left:1.2rem}
.scroll{overflow-x:auto}table{border-collapse:collapse;margin:.8rem 0 .2rem;font-size:.9rem}
caption{text-align:left;font-weight:600;padding:.3rem 0;white-space:nowrap}
th,td{border:1px solid #ccc;padding:.25rem .6rem}
th{background:#eef1f6}tbody tr:nth-child(even){background:#f8f9fb}td:first-child{font-weight:600}
td.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
.note{color:#555;font-size:.85rem;margin:.1rem 0 1rem}figure{margin:1rem 0}
figure.plot img{max-width:100%;height:auto;border:1px solid #eee}
figure.example{display:inline-block;vertical-align:top;width:420px;max-width:100%;margin:.5rem 1rem .5rem 0}
figure.example img{width:100%;height:auto;image-rendering:pixelated}figcaption{font-size:.85rem;color:#444}
"""


@dataclass(frozen=True)
class Section:
    """A titled part of the report (level 2: overview or dataset; 3: a model, transfer or detection study)
    and its tables and images in display order."""

    title: str
    level: int
    blocks: Sequence[Block] = ()


def write_report(store: ResultsStore, benchmark: str, output_dir: Path) -> tuple[Path, Path]:
    """Write ``report.html`` and ``report.md`` (figures in ``figures/``) for one benchmark of ``store`` into
    ``output_dir``, each atomically; returns their paths. ValueError when the store holds no cell of the
    benchmark, or when a report file would replace the store or another SQLite file (:func:`report_paths`)."""
    records = store.records(benchmark, status=None)
    if not records:
        raise ValueError(f"benchmark {benchmark!r}: no cells in {store.path}")
    html_path, markdown_path, figure_dir = report_paths(output_dir, {"the results store": store.path})
    done = select(records, status="done")
    fragility = fragility_blocks(done)  # benchmarks whose cells vary input size and network
    sections = [overview_section(benchmark, records),
                *([Section("Fragility: input size and model size", 2, fragility)] if fragility else []),
                *dataset_sections(done, store)]
    title = f"MedAdvBench report: {benchmark}"
    write_text(html_path, render_html(title, sections))
    write_text(markdown_path, render_markdown(title, sections, figure_dir))
    return html_path, markdown_path


def report_paths(output_dir: Path, protected: Protected) -> tuple[Path, Path, Path]:
    """``report.html``, ``report.md`` and ``figures/`` in ``output_dir`` (created), after checking that none of
    them, nor a figure the report replaces, is a protected store, an SQLite file or of the wrong kind."""
    figure_dir = output_dir / "figures"
    for folder in (output_dir, figure_dir):
        for other, what in protected_files(protected):
            if same_file(folder, other):
                raise ValueError(f"refusing to write the report into {folder}: it is {what}")
        if folder.exists() and not folder.is_dir():
            raise ValueError(f"refusing to write the report into {folder}: it exists and is not a folder")
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ValueError(f"cannot create the report folder {output_dir} ({error})") from error
    html_path, markdown_path = output_dir / "report.html", output_dir / "report.md"
    for path in (html_path, markdown_path, *figure_dir.glob("figure-*.png")):
        check_output(path, protected)
    return html_path, markdown_path, figure_dir


def write_text(path: Path, text: str) -> None:
    """Write ``text`` as UTF-8 to ``path`` atomically."""
    with atomic_write(path, encoding="utf-8") as file:
        file.write(text)


def overview_section(benchmark: str, records: Sequence[CellRecord]) -> Section:
    """Cell counts by kind and status, total compute time, package versions, and the failed cells."""
    done = select(records, status="done")
    seconds = sum(r.seconds or 0.0 for r in done)
    versions: dict[str, set[str]] = {}
    for record in done:
        for package, version in record.versions.items():
            versions.setdefault(package, set()).add(str(version))
    rows = [("benchmark", benchmark), ("datasets", ", ".join(unique(r.dataset for r in done)) or "none")]
    for kind in unique(r.kind for r in records):
        counts = Counter(r.status for r in select(records, kind=kind))
        rows.append((f"{kind} cells", ", ".join(f"{n} {status}" for status, n in sorted(counts.items()))))
    rows.append(("compute time", f"{seconds:.1f} s ({seconds / 3600:.2f} h) over the done cells"))
    rows += [(package, " / ".join(sorted(found))) for package, found in sorted(versions.items())]
    blocks: list[Block] = [Table("Run", ("item", "value"), tuple(rows))]
    failed = select(records, status="failed")
    if failed:
        errors = tuple((r.key, (r.error.strip().splitlines() or [""])[-1][:300]) for r in failed)
        blocks.append(Table("Failed cells", ("cell", "error (last line)"), errors))
    return Section("Overview", 2, blocks)


def dataset_sections(done: Sequence[CellRecord], store: ResultsStore) -> Iterator[Section]:
    """Per dataset: a heading, one section per attacked model, then its transfer and detection studies."""
    for dataset in unique(r.dataset for r in done):
        of_dataset = select(done, dataset=dataset)
        attacked = select(of_dataset, kind="attack")
        task = task_of(attacked)
        yield Section(f"{dataset} ({task})" if task else dataset, 2)
        for model in unique(r.model for r in attacked):
            yield model_section(model, select(attacked, model=model), store)
        figures = [image for build in DATASET_FIGURES for image in build(of_dataset, store)]
        if figures:
            yield Section("Models compared", 3, figures)
        for section in (transfer_section(select(of_dataset, kind="transfer")),
                        detection_section(select(of_dataset, kind="detection")),
                        Section("Defences", 3, defence_blocks(attacked))):
            if section.blocks:
                yield section


def model_section(model: str, records: Sequence[CellRecord], store: ResultsStore) -> Section:
    """One model's attack cells: the worst case over attacks (the headline), the tables, the budget curves,
    quality and Var/Cos plots, the analysis views (landscape, attribution, t-SNE), then examples."""
    main = TASK_METRICS.get(task_of(records) or "", ())[:1]
    worst = worst_cases(records, store.sample_scores)
    plots = [budget_curves(records, [*main, "success_rate"], worst), minimal_norm_curves(records, store.sample_scores),
             quality_scatter(records), perturbation_bars(records)]
    headline = worst_case_table(worst, task_of(records))
    blocks = [*([headline] if headline else []), *model_tables(records), *(plot for plot in plots if plot),
              *model_analysis(records, store.arrays), *example_images(records, store.examples)]
    return Section(f"Model {model}", 3, blocks)


def example_images(records: Sequence[CellRecord], examples_of: ExamplesOf) -> list[Image]:
    """The stored examples of the first seed's cells, in grid order."""
    seed = min(r.seed for r in records)
    legend = EXAMPLE_LEGENDS.get(task_of(records) or "", "")
    return [
        Image(f"{r.attack} at {budget_text(r.budget)}", example.png,
              f"{example.caption} (clean | amplified perturbation | adversarial{legend})", kind="example")
        for r in in_grid_order(select(records, seed=seed))
        for example in examples_of(r.key)
    ]


def transfer_section(records: Sequence[CellRecord]) -> Section:
    """All transfer attacks in the papers' layout, then a matrix table and heat map per attack and budget."""
    matrices = transfer_matrices(records)
    overview = transfer_overview(matrices)
    blocks: list[Block] = [overview] if overview else []
    for (attack, budget), matrix in matrices.items():
        title = f"Transfer success rate: {attack} at {budget_text(budget)}"
        blocks += [transfer_table(matrix, title), transfer_heatmap(matrix, title)]
    return Section("Transfer", 3, blocks)


def detection_section(records: Sequence[CellRecord]) -> Section:
    """A detector AUC table per model and budget."""
    tables = [
        detection_table(select(records, model=model, budget=budget), f"Detector AUC: {model} at {budget_text(budget)}")
        for model in unique(r.model for r in records)
        for budget in unique(r.budget for r in in_grid_order(select(records, model=model)))
    ]
    return Section("Adversarial-example detection", 3, [table for table in tables if table])


def escape(text: str) -> str:
    """Text safe inside HTML elements and attribute values."""
    return html.escape(text, quote=True)


def html_table(table: Table) -> str:
    """A table as HTML: caption, header row, numbers right-aligned, note below."""
    head = "".join(f"<th>{escape(name)}</th>" for name in table.header)
    body = "".join(
        "<tr>" + "".join(
            f'<td class="num">{escape(entry_text(c))}</td>' if c is None or isinstance(c, Summary)
            else f"<td>{escape(c)}</td>" for c in row
        ) + "</tr>"
        for row in table.rows
    )
    note = f'<p class="note">{escape(table.note)}</p>' if table.note else ""
    return (f'<div class="scroll"><table><caption>{escape(table.title)}</caption><thead><tr>{head}</tr></thead>'
            f"<tbody>{body}</tbody></table></div>{note}")


def html_image(image: Image) -> str:
    """An image as a figure with the PNG inline (base64 data URI) and its caption."""
    source = "data:image/png;base64," + base64.b64encode(image.png).decode("ascii")
    return (f'<figure class="{escape(image.kind)}"><img src="{source}" alt="{escape(image.title)}">'
            f"<figcaption><b>{escape(image.title)}</b>. {escape(image.caption)}</figcaption></figure>")


def render_html(title: str, sections: Sequence[Section]) -> str:
    """The whole report as one HTML document with a table of contents."""
    toc = "".join(f'<li class="level{s.level}"><a href="#s{i}">{escape(s.title)}</a></li>'
                  for i, s in enumerate(sections))
    body = "".join(
        f'<section id="s{i}"><h{s.level}>{escape(s.title)}</h{s.level}>'
        + "".join(html_table(b) if isinstance(b, Table) else html_image(b) for b in s.blocks) + "</section>"
        for i, s in enumerate(sections)
    )
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1"><link rel="icon" href="data:,">'
            f"<title>{escape(title)}</title><style>{STYLE}</style></head>\n<body><h1>{escape(title)}</h1>"
            f"<nav><ul>{toc}</ul></nav>\n{body}\n</body></html>\n")


def render_markdown(title: str, sections: Sequence[Section], figure_dir: Path) -> str:
    """The report as Markdown; plots and examples are written to ``figure_dir`` and linked."""
    figure_dir.mkdir(parents=True, exist_ok=True)
    for stale in figure_dir.glob("figure-*.png"):
        stale.unlink()
    parts, count = [f"# {title}"], 0
    for section in sections:
        parts.append(f"{'#' * section.level} {section.title}")
        for block in section.blocks:
            if isinstance(block, Table):
                parts += [f"**{block.title}**", to_markdown(block)] + ([f"_{block.note}_"] if block.note else [])
            else:
                count += 1
                path = figure_dir / f"figure-{count:03d}.png"
                with atomic_write(path, "wb") as file:
                    file.write(block.png)
                parts.append(f"![{block.title}]({figure_dir.name}/{path.name})\n\n{block.title}. {block.caption}")
    return "\n\n".join(parts) + "\n"
