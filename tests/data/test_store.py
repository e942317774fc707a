"""CellStore: in-memory vs backed reads, gene alignment across files, obs codes, library sizes."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pytest
import scipy.sparse as sp

from enhanced_dm.data import CellStore
from tests.helpers import shared_data

WU2020 = "singlecell/wu2020_tcells_counts.h5ad"


@pytest.fixture(scope="module")
def wu2020() -> ad.AnnData:
    return ad.read_h5ad(shared_data(WU2020))


@pytest.mark.parametrize("backed", [False, True])
def test_rows_match_the_file_in_any_order(wu2020: ad.AnnData, backed: bool) -> None:
    store = CellStore(shared_data(WU2020), backed=backed)
    rows = np.array([300, 2, 5, 6, 7, 100, 342, 0])
    batch = store.read(rows)
    order = np.sort(rows)
    assert batch["cell_index_n"].tolist() == order.tolist()
    assert batch["counts_ng"].dtype.is_floating_point is False
    np.testing.assert_array_equal(batch["counts_ng"].to_dense().numpy(), wu2020.X[order].toarray())
    np.testing.assert_allclose(batch["total_counts_n"].numpy(), wu2020.X[order].sum(1).A1)


def test_backed_and_in_memory_give_identical_batches() -> None:
    in_memory = CellStore(shared_data(WU2020), obs_columns={"batch": "batch"})
    backed = CellStore(shared_data(WU2020), backed=True, obs_columns={"batch": "batch"})
    rows = np.random.default_rng(0).choice(in_memory.n_obs, 64, replace=False)
    a, b = in_memory.read(rows), backed.read(rows)
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_array_equal(
            a[key].to_dense().numpy() if a[key].is_sparse_csr else a[key].numpy(),
            b[key].to_dense().numpy() if b[key].is_sparse_csr else b[key].numpy(),
        )


def test_two_files_with_different_genes_align(tmp_path, wu2020: ad.AnnData) -> None:
    genes = wu2020.var_names
    first = wu2020[:100, genes[:2000]].copy()
    second = wu2020[100:150, genes[1000:3000]].copy()
    first.write_h5ad(tmp_path / "first.h5ad")
    second.write_h5ad(tmp_path / "second.h5ad")
    paths = [tmp_path / "first.h5ad", tmp_path / "second.h5ad"]

    outer = CellStore(paths, backed=True)
    assert outer.var_names == list(genes[:3000])
    dense = outer.read(np.arange(150))["counts_ng"].to_dense().numpy()
    np.testing.assert_array_equal(dense[:100, :2000], first.X.toarray())
    assert not dense[:100, 2000:].any()  # genes the first file lacks read as 0
    np.testing.assert_array_equal(dense[100:, 1000:3000], second.X.toarray())
    assert not dense[100:, :1000].any()

    inner = CellStore(paths, gene_join="inner")
    assert inner.var_names == list(genes[1000:2000])
    chosen = CellStore(paths, genes=["NOT_A_GENE", genes[2500], genes[5]])
    picked = chosen.read([0, 120])["counts_ng"].to_dense().numpy()
    np.testing.assert_array_equal(picked[:, 0], [0, 0])
    np.testing.assert_array_equal(picked[:, 1], [0, second.X[20, 1500]])
    np.testing.assert_array_equal(picked[:, 2], [first.X[0, 5], 0])


def test_library_size_is_taken_over_all_genes_of_the_file(wu2020: ad.AnnData) -> None:
    store = CellStore(shared_data(WU2020), genes=list(wu2020.var_names[:50]))
    batch = store.read([0, 1])
    np.testing.assert_allclose(batch["total_counts_n"].numpy(), wu2020.X[:2].sum(1).A1)
    assert batch["counts_ng"].to_dense().sum() < batch["total_counts_n"].sum()


def test_obs_columns_become_frozen_codes(wu2020: ad.AnnData) -> None:
    store = CellStore(
        shared_data(WU2020), obs_columns={"batch": "sample", "cell_type": "cell_type"}
    )
    batch = store.read(np.arange(store.n_obs))
    names = np.array(store.categories["batch"])[batch["batch_n"].numpy()]
    np.testing.assert_array_equal(names, wu2020.obs["sample"].astype(str).to_numpy())
    restored = CellStore(
        shared_data(WU2020),
        obs_columns={"batch": "sample"},
        categories={"batch": list(reversed(store.categories["batch"]))},
    )
    codes = restored.read([0])["batch_n"]
    assert restored.categories["batch"][int(codes)] == str(wu2020.obs["sample"].iloc[0])


def test_layer_and_anndata_inputs() -> None:
    counts = sp.csr_matrix(np.array([[0, 2, 0], [1, 0, 3]], dtype=np.float32))
    adata = ad.AnnData(X=sp.csr_matrix(counts.shape, dtype=np.float32), layers={"counts": counts})
    store = CellStore(adata, layer="counts")
    assert store.is_counts
    np.testing.assert_array_equal(
        store.read([0, 1])["counts_ng"].to_dense().numpy(), counts.toarray()
    )


def test_library_sizes_with_empty_rows_anywhere() -> None:
    counts = sp.csr_matrix(
        np.array([[0, 0, 0], [1, 2, 0], [0, 0, 0], [3, 0, 4], [0, 0, 0]], dtype=np.int32)
    )
    store = CellStore(ad.AnnData(counts))
    for rows in ([0, 1, 2, 3, 4], [2, 3], [3, 4], [0]):
        np.testing.assert_array_equal(
            store.read(rows)["total_counts_n"].numpy(), counts[rows].sum(1).A1
        )


def test_backed_chunk_cache_serves_exactly_the_rows_asked_for() -> None:
    """Shuffled-pool requests (many rows per 64-row chunk) go through the chunk cache; sparse
    requests read directly. Both, in any order and across cache evictions, equal the file."""
    path = shared_data("singlecell/mouse_10k_subset_counts.h5ad")
    expected = ad.read_h5ad(path).X
    source = CellStore(path, backed=True).sources[0]
    rng = np.random.default_rng(0)
    requests = [
        np.sort(rng.choice(np.arange(640, 1664), 256, replace=False)),  # a shuffle pool: cached
        np.sort(rng.choice(np.arange(640, 1664), 256, replace=False)),  # same chunks: cache hits
        rng.choice(np.arange(9900, 10000), 60, replace=False),  # last, short chunk; unsorted
        np.sort(rng.choice(10000, 64, replace=False)),  # scattered: direct reads
        np.arange(0, 10000, 2),  # more chunks than the cache holds
    ]
    for rows in requests:
        block = source.read_rows(rows)
        got = sp.csr_matrix(
            (block.data, block.indices, block.indptr), shape=(len(rows), expected.shape[1])
        )
        assert (got != expected[rows]).nnz == 0
    assert len(source._chunks) == 157  # every chunk was needed at once
    source.read_rows(np.arange(0, 256))
    assert len(source._chunks) == 64  # then the least recently used are dropped
