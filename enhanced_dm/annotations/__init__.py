"""Parsers for annotation files (gene sets, compartments, networks, gene lists) and gene matching.

Every parser raises :class:`~enhanced_dm.errors.AnnotationFileError` (naming the file and, for a
bad line, its line number) for any content it cannot read, and no other exception type.
"""

from enhanced_dm.annotations.gmt import GeneSet, read_gmt

__all__ = [
    "GeneSet",
    "read_gmt",
]
