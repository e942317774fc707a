"""Read plain gene lists (one symbol a line), such as the bundled list of transcription factors."""

from __future__ import annotations

import os

from enhanced_dm.annotations._lines import preview, read_lines
from enhanced_dm.errors import AnnotationFileError

__all__ = ["read_gene_list"]


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
