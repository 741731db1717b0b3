"""Every table bmnas writes, as Markdown or CSV, from a header and rows of cells.

Markdown (:func:`markdown`): ``| a | b |`` lines, the second one the alignment row (``---`` plain,
``---:`` right, ``:---`` left, ``:---:`` centred, one letter per column in ``align``). CSV
(:func:`write_csv`): :mod:`csv`'s default dialect (``\\r\\n`` line ends, quoting where needed),
written atomically through :func:`bmnas.core.fileio.atomic_write`. Cells are formatted by the
caller; any other value is written as ``str(value)`` (CSV: ``None`` as an empty cell).
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Sequence
from pathlib import Path

from ..core.fileio import atomic_write

ALIGN = {"-": "---", "r": "---:", "l": ":---", "c": ":---:"}
"""Alignment letter -> the Markdown alignment cell."""


def markdown(header: Sequence[object], rows: Iterable[Sequence[object]], align: str = "") -> str:
    """The table as Markdown lines joined by newlines (no final newline).

    ``align``: one letter of :data:`ALIGN` per column; columns past its end are ``-`` (plain).
    """
    marks = [ALIGN[align[i]] if i < len(align) else ALIGN["-"] for i in range(len(header))]
    lines = [_line(header), "|" + "|".join(marks) + "|"]
    return "\n".join(lines + [_line(r) for r in rows])


def _line(cells: Sequence[object]) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


def csv_text(header: Sequence[object], rows: Iterable[Sequence[object]]) -> str:
    """The table as CSV text: the header line, then one line per row."""
    buf = io.StringIO()
    _write_rows(buf, header, rows)
    return buf.getvalue()


def write_csv(path: str | Path, header: Sequence[object], rows: Iterable[Sequence[object]]) -> Path:
    """Write the table as CSV to ``path`` atomically (rows are streamed, not held as one string)."""

    def write(tmp: Path) -> None:
        with tmp.open("w", newline="") as fh:
            _write_rows(fh, header, rows)

    return atomic_write(path, write)


def _write_rows(fh, header: Sequence[object], rows: Iterable[Sequence[object]]) -> None:
    w = csv.writer(fh)
    w.writerow(header)
    w.writerows(rows)
