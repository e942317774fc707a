"""Matching annotation symbols to a dataset's genes, and the membership matrix built from it."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import scipy.sparse

from enhanced_dm.annotations import GeneMatcher, read_gmt
from enhanced_dm.errors import ConfigError
from tests.helpers import shared_data


def test_indices_are_case_insensitive_unique_sorted_int64() -> None:
    matcher = GeneMatcher(["Actb", "CD3E", "Gapdh", "MT-CO1"])
    indices = matcher.indices(["mt-co1", "ACTB", " actb ", "UNKNOWN", "Cd3e"])
    assert indices.dtype == np.int64
    assert indices.tolist() == [0, 1, 3]
    assert matcher.indices([]).tolist() == []


def test_symbol_naming_several_data_genes_maps_to_all_unless_spelled_exactly() -> None:
    ensembl = ["ENSG1", "ENSG2", "ENSG3", "ENSG4", "ENSG5"]
    symbols = pd.Series(["TP53", "PINX1", np.nan, "pinx1", "TP53"], index=ensembl)
    matcher = GeneMatcher(pd.Index(ensembl), symbols)
    assert matcher.indices(["Pinx1"]).tolist() == [1, 3]  # no exact spelling: every case variant
    assert matcher.indices(["PINX1"]).tolist() == [1]  # exact spellings win
    assert matcher.indices(["pinx1"]).tolist() == [3]
    assert matcher.indices(["TP53"]).tolist() == [0, 4]  # a duplicated symbol: both genes
    assert matcher.is_ambiguous("PINX1") and not matcher.is_ambiguous("TP53")
    # The ids themselves still match, and missing symbols match nothing.
    assert matcher.indices(["ensg3", "nan", ""]).tolist() == [2]


def test_symbols_must_align_with_var_names() -> None:
    with pytest.raises(ConfigError, match="symbols has 1 entries but var_names has 2"):
        GeneMatcher(["A", "B"], ["a"])


def test_membership_matrix_and_statistics_are_exact() -> None:
    matcher = GeneMatcher(["A", "B", "C", "D", "B2"], ["a", "b", "c", "d", "b"])
    result = matcher.membership(
        {
            "set1": ["A", "b", "X1", "a", "x1"],
            "set2": ["C"],
            "empty": ["X2", "X3", "X1"],
        },
        max_examples=2,
    )
    matrix = result.membership_pg
    assert isinstance(matrix, scipy.sparse.csr_matrix)
    assert matrix.dtype == np.float32
    assert matrix.shape == (3, 5)
    assert matrix.toarray().tolist() == [
        [1, 1, 0, 0, 1],
        [0, 0, 1, 0, 0],
        [0, 0, 0, 0, 0],
    ]
    assert result.set_names == ("set1", "set2", "empty")
    assert result.set_size_before_p.tolist() == [3, 1, 3]
    assert result.set_size_after_p.tolist() == [3, 1, 0]
    assert result.set_size_after_p.dtype == np.int64
    assert result.unmatched_count == 3
    assert result.unmatched_examples == ("X1", "X2")
    assert result.covered_gene_fraction == pytest.approx(4 / 5)


def test_empty_inputs_give_empty_results() -> None:
    result = GeneMatcher([]).membership({})
    assert result.membership_pg.shape == (0, 0)
    assert result.covered_gene_fraction == 0.0
    assert result.unmatched_examples == ()


def test_real_go_sets_on_real_ensembl_data_with_a_symbol_column() -> None:
    anndata = pytest.importorskip("anndata")
    adata = anndata.read_h5ad(
        shared_data("singlecell/hsmm_myoblast_timecourse_fpkm.h5ad"), backed="r"
    )
    gene_sets = {s.name: s.genes for s in read_gmt(shared_data("genesets/go_bp_human.gmt"))}
    matcher = GeneMatcher(adata.var_names, adata.var["gene_short_name"])
    result = matcher.membership(gene_sets)
    adata.file.close()
    assert result.membership_pg.shape == (4463, 14937)
    # Reference: exact-case symbol lookup (the GO symbols and this var column are both upper case).
    row_of: dict[str, list[int]] = {}
    for index, symbol in enumerate(adata.var["gene_short_name"].astype(str)):
        row_of.setdefault(symbol.upper(), []).append(index)
    expected = [
        len({i for gene in genes for i in row_of.get(gene.upper(), [])})
        for genes in gene_sets.values()
    ]
    assert result.set_size_after_p.tolist() == expected
    assert result.set_size_before_p.tolist() == [len(genes) for genes in gene_sets.values()]
    assert 0 < result.covered_gene_fraction < 1
