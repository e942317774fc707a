"""Read regulatory networks (regulator -> target edge lists, signed or not) from TSV/CSV files."""

from __future__ import annotations

import math
import os
from collections.abc import Hashable

import numpy as np
import pandas as pd

from enhanced_dm.annotations._lines import read_lines, refuse_repeat
from enhanced_dm.annotations._table import (
    Row,
    find_column,
    require_cells,
    sniff_delimiter,
    split_rows,
)
from enhanced_dm.errors import AnnotationFileError

__all__ = ["read_network"]

_SIGNS = {"+": 1.0, "+1": 1.0, "1": 1.0, "-": -1.0, "-1": -1.0}


def read_network(
    path: str | os.PathLike[str],
    *,
    source_column: str = "source",
    target_column: str = "target",
    weight_column: str | None = None,
    sign_column: str | None = None,
) -> pd.DataFrame:
    """Read an edge list as a DataFrame with columns source, target and weight (float64).

    Rules (any break raises :class:`~enhanced_dm.errors.AnnotationFileError` with the line):

    - tab- or comma-separated (sniffed from the first line, a tab wins); UTF-8, plain or gzip
      (``.tsv.gz``), any line ending, blank lines skipped;
    - the first line is a header; columns are found by name, case-insensitively, in any order,
      and the others (``interaction``, ``p.value``, ...) are ignored. The bundled PathwayCommons
      file (``source, interaction, target``) reads with the defaults; PROGENy
      (``gene, pathway, weight, p.value``) with ``source_column="pathway", target_column="gene"``;
    - weight: ``weight_column`` if given (it must exist), else a column named ``weight`` if there
      is one, else 1.0 for every edge (an unsigned network). Weights must be finite numbers;
    - sign: ``sign_column`` if given, else a column named ``sign`` if there is one; its values
      (``+``, ``-``, ``1``, ``-1``, ``+1``) multiply the weight;
    - source and target must be non-empty; an edge listed twice is an error naming both lines
      (summing or dropping one would change the network silently). Self-loops are kept.
    """
    lines = read_lines(path)
    delimiter = sniff_delimiter(path, lines[0])
    header, *data_rows = split_rows(path, lines, delimiter)
    source_index = find_column(path, header, source_column, "source")
    target_index = find_column(path, header, target_column, "target")
    weight_index = _optional_column(path, header, weight_column, "weight")
    sign_index = _optional_column(path, header, sign_column, "sign")
    needed = max(source_index, target_index, weight_index, sign_index) + 1

    first_line_of: dict[Hashable, int] = {}
    edges: list[tuple[str, str]] = []
    weights: list[float] = []
    for row in data_rows:
        require_cells(path, row, needed, delimiter, "an edge")
        edge = (row.cells[source_index], row.cells[target_index])
        for role, name in (("source", edge[0]), ("target", edge[1])):
            if not name:
                raise AnnotationFileError(path, f"empty {role}", line=row.number)
        refuse_repeat(path, first_line_of, edge, f"edge {edge[0]!r} -> {edge[1]!r}", row.number)
        edges.append(edge)
        weight = _weight(path, row, weight_index) if weight_index >= 0 else 1.0
        if sign_index >= 0:
            weight *= _sign(path, row, sign_index)
        weights.append(weight)
    if not edges:
        raise AnnotationFileError(path, "the table holds no edges, only a header")
    frame = pd.DataFrame(edges, columns=["source", "target"])
    frame["weight"] = np.asarray(weights, dtype=np.float64)
    return frame


def _optional_column(
    path: str | os.PathLike[str], header: Row, name: str | None, default: str
) -> int:
    """The column ``name`` (which must exist), else the column ``default`` if any, else -1."""
    if name is not None:
        return find_column(path, header, name, default)
    names = [cell.casefold() for cell in header.cells]
    return names.index(default) if default in names else -1


def _weight(path: str | os.PathLike[str], row: Row, index: int) -> float:
    text = row.cells[index]
    try:
        weight = float(text)
    except ValueError:
        weight = math.nan
    if not math.isfinite(weight):
        raise AnnotationFileError(path, f"weight {text!r} is not a finite number", line=row.number)
    return weight


def _sign(path: str | os.PathLike[str], row: Row, index: int) -> float:
    text = row.cells[index]
    if text not in _SIGNS:
        raise AnnotationFileError(
            path, f"sign {text!r} is not one of {sorted(_SIGNS)}", line=row.number
        )
    return _SIGNS[text]
