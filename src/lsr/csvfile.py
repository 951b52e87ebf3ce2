"""Reading the CSV and text files users write by hand or in a spreadsheet (count tables,
estimates, block grids): one set of refusals for all of them.

Why: each file type used to decode and check its header on its own, so a Windows-1252
file was a traceback in one command and a clear error in another, and a ';'-separated
file (a European Excel's "CSV") said "missing column 'z'" instead of its real problem.
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Sequence
from pathlib import Path

from lsr.errors import LsrInputError

PathType = str | os.PathLike[str]


def read_text(path: PathType) -> str:
    """The file's text (UTF-8, a BOM dropped); LsrInputError naming the file when it is
    missing, a folder, or not UTF-8 (with the byte and where, and how to save it)."""
    p = Path(path)
    if not p.exists():
        raise LsrInputError("file not found", p)
    if p.is_dir():
        raise LsrInputError("is a folder (a file was expected)", p)
    try:
        return p.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as err:
        raise LsrInputError(
            f"not UTF-8 text (byte {err.object[err.start]:#04x} at offset {err.start}): "
            "save it as UTF-8 (in Excel: 'CSV UTF-8')",
            p,
        ) from None


def check_header(header: Sequence[str], path: PathType) -> None:
    """Refuse a header with a column twice (a dict reader keeps the last silently, so the
    other column's values would be dropped without a word); empty names are Excel's
    padding, not columns."""
    names = [h.strip() for h in header]
    twice = sorted({h for h in names if h and names.count(h) > 1})
    if twice:
        raise LsrInputError(f"column {', '.join(map(repr, twice))} appears twice", path, "header")


def separator_hint(header: Sequence[str]) -> str:
    """'; the columns are separated by semicolons, ...' when the header is one field holding
    ';' or a tab (a European Excel CSV), else ''."""
    found = ",".join(header)
    if len(header) == 1 and any(sep in found for sep in (";", "\t")):
        sep = "semicolons" if ";" in found else "tabs"
        return f"; the columns are separated by {sep}, and lsr reads commas"
    return ""


def check_field_count(
    values: Sequence[str | None],
    header: Sequence[str],
    path: PathType,
    where: str,
    least: int = 0,
    missing: str = "",
) -> None:
    """Refuse a row whose values do not line up with the header's columns.

    Why: a decimal comma (``0,10,5`` for 10.5 under ``z,percent_cancer``) adds a value, and
    csv readers drop or shift it without a word: 10 was read. Empty fields past the header
    (a spreadsheet's padding, ``0,10,,``) are no values. With ``least``, a row of fewer
    values is refused too, ``missing`` saying what to do instead.
    """
    texts = [v or "" for v in values]
    named = [h.strip() for h in header]
    while named and not named[-1]:  # the header's own padding
        named.pop()
    surplus = any(v.strip() for v in texts[len(header) :])
    if not surplus and len(texts) >= least:
        return
    why = "a decimal comma? lsr reads 0.5, not 0,5" if surplus else "a value is missing"
    raise LsrInputError(
        f"{len(texts)} values ({','.join(texts)}) for {len(named)} columns ({','.join(named)}): "
        + (why if surplus or not missing else f"{why} ({missing})"),
        path,
        where,
    )


def csv_reader(path: PathType) -> tuple[csv.DictReader, list[str]]:
    """A dict reader over the CSV at ``path`` and its header (names stripped), after
    :func:`read_text` and :func:`check_header`."""
    reader = csv.DictReader(io.StringIO(read_text(path)))
    header = [h.strip() for h in (reader.fieldnames or [])]
    check_header(header, path)
    reader.fieldnames = header
    return reader, header


def require_columns(header: Sequence[str], columns: Sequence[str], path: PathType) -> None:
    """Raise naming the first of ``columns`` missing from ``header`` (and the separator,
    when that is the real problem: :func:`separator_hint`)."""
    for col in columns:
        if col not in header:
            found = ",".join(header)
            raise LsrInputError(
                f"missing column '{col}' (header: {found!r}{separator_hint(header)})",
                path,
                "header",
            )
