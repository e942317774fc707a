"""Read plain gene lists (one symbol a line), such as the bundled list of transcription factors,
and gene type tables (gene, TF | target)."""

from __future__ import annotations

import os

from enhanced_dm.annotations._lines import preview, read_lines
from enhanced_dm.errors import AnnotationFileError

__all__ = ["GENE_TYPES", "read_gene_list", "read_gene_types"]

GENE_TYPES = ("tf", "target", "both")


def read_gene_list(path: str | os.PathLike[str]) -> list[str]:
    """Read the gene symbols of a one-symbol-a-line file, in file order.

    UTF-8, plain or gzip, any line ending. Everything from a ``#`` to the end of its line is a
    comment; lines that are then blank are skipped. Symbols are stripped of surrounding
    whitespace; a repeated symbol is kept once, at its first place. A line holding more than one
    word (a tab, a comma or a space inside) is an error with its line number: it is most likely a
    table, and taking its first column silently could read the wrong column.
    """
    symbols: dict[str, None] = {}
    for line in read_lines(path):
        symbol = line.text.split("#", 1)[0].strip()
        if not symbol:
            continue
        if len(symbol.split()) > 1 or "," in symbol:
            raise AnnotationFileError(
                path,
                f"expected one gene symbol per line, found {preview(symbol)}",
                line=line.number,
            )
        symbols[symbol] = None
    if not symbols:
        raise AnnotationFileError(path, "the file holds no gene symbols, only comments")
    return list(symbols)


def read_gene_types(path: str | os.PathLike[str]) -> dict[str, str]:
    """Gene -> ``"tf"``, ``"target"`` or ``"both"`` from a gene type file.

    Either a plain list of TF symbols (:func:`read_gene_list`: every gene listed is a TF), or a
    two-column table (tab or comma; a header line ``gene<TAB>type`` is skipped) whose second
    column is ``TF``, ``target`` or ``both`` (any case). A gene listed as TF and as target is
    ``"both"``. A row with another type is an error naming its line.
    """
    lines = [line for line in read_lines(path) if line.text.split("#", 1)[0].strip()]
    if not lines:
        raise AnnotationFileError(path, "the file holds no genes, only comments")
    first = lines[0].text
    if "\t" not in first and "," not in first:
        return dict.fromkeys(read_gene_list(path), "tf")
    delimiter = "\t" if "\t" in first else ","
    types: dict[str, str] = {}
    for index, line in enumerate(lines):
        cells = [cell.strip() for cell in line.text.split("#", 1)[0].split(delimiter)]
        if len(cells) < 2 or not cells[0]:
            raise AnnotationFileError(
                path, f"expected gene{delimiter!r}type, found {preview(line.text)}", line.number
            )
        kind = cells[1].casefold()
        if index == 0 and kind not in GENE_TYPES:
            continue  # a header
        if kind not in GENE_TYPES:
            raise AnnotationFileError(
                path, f"gene type {cells[1]!r} is not TF, target or both", line=line.number
            )
        previous = types.get(cells[0])
        types[cells[0]] = kind if previous in (None, kind) else "both"
    return types
