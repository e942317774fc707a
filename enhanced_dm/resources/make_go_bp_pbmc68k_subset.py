"""Rebuild ``go_bp_pbmc68k_subset.gmt``: the GO BP sets with at least 15 genes among pbmc68k's 765.

Run from the repository root (it reads the shared real-data folder, never the network)::

    python enhanced_dm/resources/make_go_bp_pbmc68k_subset.py \
        ../shared/data/genesets/go_bp_human.gmt \
        ../shared/data/singlecell/pbmc68k_reduced_counts.h5ad \
        enhanced_dm/resources/go_bp_pbmc68k_subset.gmt

Each kept line is copied byte for byte (full gene list, file order), so the "genes before
matching" statistics of the bundled file are those of the real GO sets. Genes are compared
case-insensitively, as :class:`enhanced_dm.annotations.GeneMatcher` compares them.
"""

from __future__ import annotations

import sys

import anndata

MIN_GENES_IN_DATA = 15


def main(gmt_path: str, h5ad_path: str, out_path: str) -> None:
    data_genes = {
        str(gene).casefold() for gene in anndata.read_h5ad(h5ad_path, backed="r").var_names
    }
    kept = 0
    with open(gmt_path, encoding="utf-8") as source, open(out_path, "w", encoding="utf-8") as out:
        for line in source:
            genes = line.rstrip("\n").split("\t")[2:]
            if sum(gene.casefold() in data_genes for gene in set(genes)) >= MIN_GENES_IN_DATA:
                out.write(line)
                kept += 1
    print(f"{out_path}: {kept} gene sets")


if __name__ == "__main__":
    main(*sys.argv[1:4])
