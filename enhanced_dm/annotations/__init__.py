"""Parsers for annotation files (gene sets, compartments, networks, gene lists) and gene matching.

Every parser raises :class:`~enhanced_dm.errors.AnnotationFileError` (naming the file and, for a
bad line, its line number) for any content it cannot read, and no other exception type.
"""

from enhanced_dm.annotations.compartments import read_gene_compartments
from enhanced_dm.annotations.gene_list import read_gene_list, read_gene_types
from enhanced_dm.annotations.gmt import GeneSet, read_gmt
from enhanced_dm.annotations.matching import GeneMatcher, MembershipResult
from enhanced_dm.annotations.network import load_network, read_network

__all__ = [
    "GeneMatcher",
    "GeneSet",
    "load_network",
    "MembershipResult",
    "read_gene_compartments",
    "read_gene_list",
    "read_gene_types",
    "read_gmt",
    "read_network",
]
