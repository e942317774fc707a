"""Read gene -> subcellular compartment assignments from a table (TSV/CSV) or a GMT file."""

from __future__ import annotations

import os
from typing import Literal

import pandas as pd

from enhanced_dm.annotations._lines import read_lines
from enhanced_dm.annotations._table import (
    Row,
    find_column,
    require_cells,
    sniff_delimiter,
    split_rows,
)
from enhanced_dm.annotations.gmt import read_gmt
from enhanced_dm.errors import AnnotationFileError

__all__ = ["COMPARTMENT_HEADER_NAMES", "GENE_HEADER_NAMES", "read_gene_compartments"]

GENE_HEADER_NAMES = frozenset(
    {"gene", "genes", "symbol", "gene_symbol", "genesymbol", "gene_name", "hgnc_symbol"}
)
COMPARTMENT_HEADER_NAMES = frozenset(
    {"compartment", "compartments", "location", "localization", "localisation"}
)
NON_IEA_COLUMN = "non_iea"
_TRUE = frozenset({"true", "t", "1", "yes"})
_FALSE = frozenset({"false", "f", "0", "no"})


def read_gene_compartments(
    path: str | os.PathLike[str],
    *,
    gene_column: str | None = None,
    compartment_column: str | None = None,
    non_iea_only: bool = False,
    file_format: Literal["auto", "table", "gmt"] = "auto",
) -> pd.DataFrame:
    """Read which genes belong to which compartment, as a DataFrame with columns gene, compartment.

    A gene may be in several compartments (one row each); repeated (gene, compartment) pairs are
    kept once, in order of first appearance. With ``file_format="auto"`` a path ending in
    ``.gmt`` or ``.gmt.gz`` is read as GMT (set name = compartment, see
    :func:`~enhanced_dm.annotations.read_gmt`), anything else as a table:

    - tab- or comma-separated, sniffed from the first data line (a tab wins); UTF-8, plain or
      gzip, any line ending, blank lines skipped, extra columns ignored;
    - a header is recognised when a cell of the first line is a known gene column name
      (:data:`GENE_HEADER_NAMES`, e.g. ``symbol``, ``gene``), a known compartment column name
      (:data:`COMPARTMENT_HEADER_NAMES`) or ``non_iea``; the gene and compartment columns are
      then found by name, in any order. Otherwise there is no header and the first two columns
      are gene and compartment. A header with other names needs ``gene_column=`` and
      ``compartment_column=`` (matched case-insensitively);
    - ``non_iea_only=True`` keeps the rows whose ``non_iea`` column is true (``true/false``,
      ``1/0``, ``yes/no``, ``t/f``), i.e. assignments backed by evidence other than electronic
      annotation (as in the bundled GO table). A file without that column is an error rather
      than silently unfiltered.

    A row with too few columns, an empty gene or compartment, or an unreadable ``non_iea`` value
    raises :class:`~enhanced_dm.errors.AnnotationFileError` with its line number.
    """
    is_gmt = str(path).lower().endswith((".gmt", ".gmt.gz"))
    if file_format == "gmt" or (file_format == "auto" and is_gmt):
        if gene_column is not None or compartment_column is not None or non_iea_only:
            raise AnnotationFileError(
                path,
                "gene_column, compartment_column and non_iea_only apply to tables; "
                "a GMT file has no columns (its set names are the compartments)",
            )
        pairs = [(gene, gene_set.name) for gene_set in read_gmt(path) for gene in gene_set.genes]
        return pd.DataFrame(pairs, columns=["gene", "compartment"])
    return _read_table(path, gene_column, compartment_column, non_iea_only)


def _read_table(
    path: str | os.PathLike[str],
    gene_column: str | None,
    compartment_column: str | None,
    non_iea_only: bool,
) -> pd.DataFrame:
    lines = read_lines(path)
    delimiter = sniff_delimiter(path, lines[0])
    rows = split_rows(path, lines, delimiter)
    header = rows[0]
    header_names = {cell.casefold() for cell in header.cells}
    has_header = (
        gene_column is not None
        or compartment_column is not None
        or non_iea_only
        or bool(header_names & (GENE_HEADER_NAMES | COMPARTMENT_HEADER_NAMES | {NON_IEA_COLUMN}))
    )
    if has_header:
        gene_index = _header_column(path, header, gene_column, GENE_HEADER_NAMES, "gene")
        compartment_index = _header_column(
            path, header, compartment_column, COMPARTMENT_HEADER_NAMES, "compartment"
        )
        data_rows = rows[1:]
    else:
        gene_index, compartment_index = 0, 1
        data_rows = rows
    non_iea_index = find_column(path, header, NON_IEA_COLUMN, "evidence") if non_iea_only else -1
    needed = max(gene_index, compartment_index, non_iea_index) + 1

    pairs: dict[tuple[str, str], None] = {}
    for row in data_rows:
        require_cells(path, row, needed, delimiter, "a gene and its compartment")
        for role, index in (("gene", gene_index), ("compartment", compartment_index)):
            if not row.cells[index]:
                raise AnnotationFileError(
                    path, f"empty {role} in column {index + 1}", line=row.number
                )
        if non_iea_only and not _is_true(path, row, non_iea_index):
            continue
        pairs[(row.cells[gene_index], row.cells[compartment_index])] = None
    if not pairs:
        kept = " with non_iea true" if non_iea_only else ""
        raise AnnotationFileError(path, f"the table holds no gene-compartment rows{kept}")
    return pd.DataFrame(list(pairs), columns=["gene", "compartment"])


def _header_column(
    path: str | os.PathLike[str],
    header: Row,
    name: str | None,
    known_names: frozenset[str],
    role: str,
) -> int:
    """The column named ``name`` or, when not given, the first with a known name for ``role``."""
    if name is not None:
        return find_column(path, header, name, role)
    for index, cell in enumerate(header.cells):
        if cell.casefold() in known_names:
            return index
    raise AnnotationFileError(
        path,
        f"the header {header.cells} names no {role} column (expected one of "
        f"{sorted(known_names)}); pass {role}_column= to name it",
        line=header.number,
    )


def _is_true(path: str | os.PathLike[str], row: Row, index: int) -> bool:
    value = row.cells[index].casefold()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise AnnotationFileError(
        path,
        f"{NON_IEA_COLUMN} value {row.cells[index]!r} is not a boolean "
        "(expected true/false, 1/0, yes/no or t/f)",
        line=row.number,
    )
