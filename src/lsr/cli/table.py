"""``lsr table``: show count tables and build one from an expert's estimates."""

from __future__ import annotations

import math
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from lsr.atomic import check_replaceable
from lsr.counttable import PAPER_EDGES, CountTable, Estimate, check_row_fields, same_edges
from lsr.csvfile import csv_reader, require_columns
from lsr.errors import LsrInputError

app = typer.Typer(help="Count tables p(c|z): show, build from estimates.", no_args_is_help=True)


def render(table: CountTable, title: str | None = None) -> Table:
    """A rich table laid out like paper Table 1 (percent, mean ± std per class, n)."""
    out = Table(title=title or table.name or None)
    problems = table.bin_problems()
    for col in table.header():
        out.add_column(col, justify="right")
    for b, row in enumerate(table.format_rows()):
        style = "yellow" if b in problems else None
        out.add_row(*row, style=style)
    return out


@app.command("show")
def show(source: str = typer.Argument(..., help="'paper-table1', or a table .json/.csv")) -> None:
    """Print a count table as paper Table 1 does."""
    table = CountTable.load(source)
    console = Console()
    console.print(render(table, title=str(source)))
    print_problems(console, table)


def print_problems(console: Console, table: CountTable) -> None:
    """Each flagged bin's reason, and a top bin that contradicts the classifier's order."""
    for b, why in table.bin_problems().items():
        console.print(f"[yellow]bin {table.bin_labels()[b]}%: {why}[/yellow]")


def read_estimates(path: Path) -> list[Estimate]:
    """Read an estimates CSV: columns ``z`` and ``percent_cancer`` (optional: expert,
    slide, block, skipped); one row per block the expert looked at.

    A file without a counted estimate (only a header, or only skips) is an error: with a
    fallback it would silently become a copy of the fallback table."""
    reader, header = csv_reader(path)
    require_columns(header, ["z", "percent_cancer"], path)
    out, bad = [], []
    for i, row in enumerate(reader, start=2):
        check_row_fields(row, header, path, f"row {i}")
        skipped = (row.get("skipped") or "").strip()
        try:
            z = int(row["z"])
            pc_text = (row["percent_cancer"] or "").strip()
            pc = float(pc_text) if pc_text else None
        except (TypeError, ValueError):
            raise LsrInputError(
                f"z must be an integer and percent_cancer a number, got {row['z']!r}, "
                f"{row['percent_cancer']!r}",
                path,
                f"row {i}",
            ) from None
        if pc is None and not skipped:
            raise LsrInputError("percent_cancer is empty (and no skip reason)", path, f"row {i}")
        if pc is not None and not skipped and not 0 <= pc <= 100:  # NaN fails too
            bad.append((i, pc))
        out.append(
            Estimate(
                z, pc, (row.get("expert") or "").strip(), (row.get("slide") or "").strip(),
                (row.get("block") or "").strip(), skipped=skipped,
            )
        )  # fmt: skip
    if bad:
        nan = [(i, v) for i, v in bad if math.isnan(v)]
        rows = nan or bad
        where = ("row " if len(rows) == 1 else "rows ") + ", ".join(str(i) for i, _ in rows[:5])
        where += ", ..." if len(rows) > 5 else ""
        if nan:
            problem = f"{len(nan)} estimate{' is' if len(nan) == 1 else 's are'} NaN"
        else:
            values = ", ".join(f"{v:g}" for _, v in rows[:5])
            problem = f"cancer percentages must lie in 0-100, got {values}"
        raise LsrInputError(problem, path, where)
    if not any(not e.skipped for e in out):
        why = "every row is skipped" if out else "only a header"
        raise LsrInputError(f"no estimates in the file ({why})", path)
    return out


def refuse_to_clobber(output: Path, estimates: Path) -> None:
    """Raise unless writing ``output`` can lose nothing the user made: it must not be the
    estimates file itself, and an existing file there must be a count table (replacing an
    older table is normal; replacing estimates, annotations or anything else is not)."""
    if output.exists() and estimates.exists() and output.resolve().samefile(estimates):
        raise LsrInputError(
            "the output is the estimates file itself; writing the table there would "
            "replace the expert's estimates: choose another -o",
            output,
        )
    check_replaceable(output, CountTable.load, "a count table", "-o")


@app.command("from-estimates")
def from_estimates(
    estimates: Path = typer.Argument(..., help="CSV with columns z, percent_cancer (0-100)"),
    output: Path = typer.Option(..., "-o", "--output", help="table to write (.json or .csv)"),
    fallback: str | None = typer.Option(
        None, help="fill bins without estimates from this table (e.g. 'paper-table1')"
    ),
) -> None:
    """Build a count table from an expert's block estimates."""
    refuse_to_clobber(output, estimates)
    records = read_estimates(estimates)
    fb = CountTable.load(fallback) if fallback else None
    if fb is not None and not same_edges(fb.edges, PAPER_EDGES):  # the fallback's fault
        raise LsrInputError(
            f"its bin edges ({', '.join(f'{e:g}' for e in fb.edges)}) are not the paper's, "
            "which the estimates' z use: a fallback can only fill bins it has",
            fallback,
        )
    try:
        table = CountTable.from_estimate_list(
            records, edges=PAPER_EDGES, fallback=fb, provenance={"estimates_file": str(estimates)}
        )
    except LsrInputError as err:
        raise LsrInputError(err.problem, estimates) from None
    table.save(output)
    console = Console()
    console.print(render(table, title=str(output)))
    print_problems(console, table)
    typer.echo(f"wrote {output}")
