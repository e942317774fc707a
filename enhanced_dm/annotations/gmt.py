"""Read gene sets from GMT files (the Broad Institute's Gene Matrix Transposed format).

One gene set a line: ``name<TAB>description<TAB>gene<TAB>gene...``. We read it strictly, because
a silently mis-read file trains a model on the wrong biology; see :func:`read_gmt` for the rules.
"""

from __future__ import annotations

import os
from collections.abc import Hashable
from dataclasses import dataclass

from enhanced_dm.annotations._lines import preview, read_lines, refuse_repeat
from enhanced_dm.errors import AnnotationFileError

__all__ = ["GeneSet", "read_gmt"]

EXPECTED_LINE = "expected name<TAB>description<TAB>gene..."


@dataclass(frozen=True)
class GeneSet:
    """One GMT line: the set's name, its description, its genes (in file order) and its line."""

    name: str
    description: str
    genes: tuple[str, ...]
    line: int


def read_gmt(path: str | os.PathLike[str]) -> list[GeneSet]:
    """Read every gene set of a GMT file, in file order.

    Rules (any break raises :class:`~enhanced_dm.errors.AnnotationFileError` naming the file and,
    for a bad line, its line number):

    - Fields are separated by tabs; the file is UTF-8 (a byte-order mark is dropped), plain or
      gzip-compressed; ``\\n``, ``\\r\\n`` and ``\\r`` line endings are all accepted.
    - Blank lines are skipped; line numbers still count them.
    - Each line needs at least three fields: name, description and at least one gene. The
      description may be empty (``name<TAB><TAB>gene``), but it may not be left out: a line
      ``name<TAB>gene`` cannot be told from a set with a description and no genes, so it is an
      error. A line ``name<TAB>geneA<TAB>geneB`` is read with ``geneA`` as its description; no
      parser can tell that a description was left out there.
    - Fields are stripped of surrounding whitespace; empty gene fields (trailing or doubled tabs)
      are ignored; a gene repeated within a set is kept once, at its first place. Gene fields are
      kept verbatim otherwise (``"CCL3 /// CCL3L1"`` stays one entry, which matching then reports
      as unmatched).
    - Set names must be non-empty and unique (case-sensitive): a repeated name is an error naming
      both lines, since merging or dropping either set would change the biology silently.
    - A file with no gene set at all is an error.
    """
    gene_sets: list[GeneSet] = []
    first_line_of: dict[Hashable, int] = {}
    for line in read_lines(path):
        fields = [field.strip() for field in line.text.split("\t")]
        if len(fields) < 3:
            hint = "" if "\t" in line.text else "; the line holds no tab"
            raise AnnotationFileError(
                path,
                f"{EXPECTED_LINE}, found {len(fields)} field{'s' if len(fields) != 1 else ''} "
                f"in {preview(line.text)}{hint}",
                line=line.number,
            )
        name, description = fields[0], fields[1]
        if not name:
            raise AnnotationFileError(
                path, f"empty gene set name; {EXPECTED_LINE}", line=line.number
            )
        genes = tuple(dict.fromkeys(gene for gene in fields[2:] if gene))
        if not genes:
            raise AnnotationFileError(
                path, f"gene set {name!r} lists no genes; {EXPECTED_LINE}", line=line.number
            )
        refuse_repeat(path, first_line_of, name, f"gene set name {name!r}", line.number)
        gene_sets.append(GeneSet(name, description, genes, line.number))
    return gene_sets
