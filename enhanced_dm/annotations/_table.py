"""Split delimited text lines (TSV or CSV) into cells, keeping each row's line number.

Shared by the compartment-table and network parsers. The delimiter is a tab or a comma, sniffed
from the first data line (a tab wins). Cells are stripped of surrounding whitespace. Quoting
follows the csv module (``"a,b"`` is one cell, ``""`` an escaped quote), one line at a time, so a
quoted cell can never swallow the next line and line numbers stay those of the file.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Sequence
from dataclasses import dataclass

from enhanced_dm.annotations._lines import NumberedLine, preview
from enhanced_dm.errors import AnnotationFileError

__all__ = ["Row", "find_column", "require_cells", "sniff_delimiter", "split_rows"]

_DELIMITER_NAMES = {"\t": "a tab", ",": "a comma"}


@dataclass(frozen=True)
class Row:
    """The cells of one data line and its 1-based line number."""

    number: int
    cells: list[str]


def sniff_delimiter(path: str | os.PathLike[str], first: NumberedLine) -> str:
    """Tab if the first data line holds one, else comma if it holds one, else an error."""
    for delimiter in _DELIMITER_NAMES:
        if delimiter in first.text:
            return delimiter
    raise AnnotationFileError(
        path,
        "expected at least two columns separated by a tab or a comma, "
        f"found one column {preview(first.text)}",
        line=first.number,
    )


def split_rows(
    path: str | os.PathLike[str], lines: Sequence[NumberedLine], delimiter: str
) -> list[Row]:
    """Split every line into stripped cells; unbalanced quotes are an error with the line."""
    rows = []
    for line in lines:
        if '"' not in line.text:
            cells = line.text.split(delimiter)
        else:
            try:
                cells = next(
                    csv.reader([line.text], delimiter=delimiter, strict=True, skipinitialspace=True)
                )
            except csv.Error as error:
                raise AnnotationFileError(
                    path, f"malformed quoting ({error}) in {preview(line.text)}", line=line.number
                ) from None
        rows.append(Row(line.number, [cell.strip() for cell in cells]))
    return rows


def require_cells(
    path: str | os.PathLike[str], row: Row, needed: int, delimiter: str, expected: str
) -> None:
    """Fail with the line number when ``row`` has fewer than ``needed`` cells."""
    if len(row.cells) >= needed:
        return
    found = len(row.cells)
    other = "," if delimiter == "\t" else "\t"
    hint = ""
    if any(other in cell for cell in row.cells):
        hint = (
            f"; the first line is split by {_DELIMITER_NAMES[delimiter]} "
            f"but this one holds {_DELIMITER_NAMES[other]}"
        )
    raise AnnotationFileError(
        path,
        f"expected {expected} ({needed} columns separated by {_DELIMITER_NAMES[delimiter]}), "
        f"found {found} column{'s' if found != 1 else ''}{hint}",
        line=row.number,
    )


def find_column(path: str | os.PathLike[str], header: Row, name: str, role: str) -> int:
    """Index of the header column called ``name`` (case-insensitive), else an error listing them."""
    wanted = name.strip().casefold()
    for index, cell in enumerate(header.cells):
        if cell.casefold() == wanted:
            return index
    raise AnnotationFileError(
        path,
        f"header has no {role} column {name!r}; its columns are {header.cells}",
        line=header.number,
    )
