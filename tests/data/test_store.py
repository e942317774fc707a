"""CellStore: in-memory vs backed reads, gene alignment across files, obs codes, library sizes."""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import anndata as ad
import h5py
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch

from enhanced_dm.data import CellStore
from enhanced_dm.data.prepare import prepare_h5ad
from enhanced_dm.data.sources import ValuesLayout
from enhanced_dm.errors import DataFileError
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
    chosen = CellStore(paths, genes=["NOT_A_GENE", genes[2500], genes[5]], missing_genes="zeros")
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


@pytest.mark.parametrize("mode", ["in memory", "h5py spans", "direct", "direct chunked"])
def test_held_rows_serve_exactly_the_rows_asked_for(
    mode: str, mouse_mappable: str, mouse_chunked: str
) -> None:
    """Shuffle pools, repeated pools, an unsorted tail, scattered rows and half the file are
    read through every reader (h5py spans: coalesced gaps hold unrequested rows) and equal the
    file; a group of batches read together equals the batches read one by one."""
    path = shared_data("singlecell/mouse_10k_subset_counts.h5ad")
    expected = ad.read_h5ad(path).X
    files = {"direct": mouse_mappable, "direct chunked": mouse_chunked}
    store = CellStore(files.get(mode, path), backed=mode != "in memory")
    source = store.sources[0]
    if mode != "in memory":
        assert source.reads_directly is mode.startswith("direct")
    rng = np.random.default_rng(0)
    requests = [
        np.sort(rng.choice(np.arange(640, 1664), 256, replace=False)),
        np.sort(rng.choice(np.arange(640, 1664), 256, replace=False)),
        rng.choice(np.arange(9900, 10000), 60, replace=False),
        np.sort(rng.choice(10000, 64, replace=False)),
        np.arange(0, 10000, 2),
    ]
    for rows in requests:
        block = source.read_rows(rows)
        got = sp.csr_matrix(
            (block.data, block.indices, block.indptr), shape=(len(rows), expected.shape[1])
        )
        assert (got != expected[rows]).nnz == 0
    together = store.read_batches(requests[:4])
    for rows, batch in zip(requests[:4], together, strict=True):
        alone = store.read(rows)
        for key in alone:
            assert torch.equal(batch[key].to_dense(), alone[key].to_dense()), key


def test_prepared_copy_is_the_same_h5ad_and_the_source_is_untouched(
    mouse_mappable: str,
) -> None:
    path = shared_data("singlecell/mouse_10k_subset_counts.h5ad")
    before = hashlib.sha256(Path(path).read_bytes()).hexdigest()
    original, prepared = ad.read_h5ad(path), ad.read_h5ad(mouse_mappable)
    assert (original.X != prepared.X).nnz == 0
    pd.testing.assert_frame_equal(original.obs, prepared.obs)
    pd.testing.assert_frame_equal(original.var, prepared.var)
    with h5py.File(mouse_mappable, "r") as file:
        assert all(file["X"][name].chunks is None for name in ("data", "indices", "indptr"))
    assert hashlib.sha256(Path(path).read_bytes()).hexdigest() == before
    with pytest.raises(DataFileError, match="already exists"):
        prepare_h5ad(path, mouse_mappable)
    with pytest.raises(DataFileError, match="layers/counts is missing"):
        prepare_h5ad(path, Path(mouse_mappable).with_name("other.h5ad"), matrices=["layers/counts"])


def test_a_file_truncated_after_opening_is_a_clear_error(
    mouse_mappable: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Direct reads meet the end of a truncated file as a short read: a DataFileError naming
    the file, never garbage values or a crash."""
    copy = tmp_path / "copy.h5ad"
    shutil.copyfile(mouse_mappable, copy)
    with h5py.File(copy, "r") as file:
        data = file["X/data"]
        end_of_data = data.id.get_offset() + data.size * data.dtype.itemsize
    store = CellStore(str(copy), backed=True)
    assert store.sources[0].reads_directly
    store.read([0, 1])
    os.truncate(copy, end_of_data - 4096)  # e.g. another process rewriting the file
    last_rows = [store.n_obs - 2, store.n_obs - 1]
    with pytest.raises(DataFileError, match=r"copy\.h5ad \(X\): the file changed during the run"):
        store.read(last_rows)  # the identity check (size, mtime, inode) comes first
    # A truncation between that check and the read still meets the short-read guard.
    monkeypatch.setattr(type(store.sources[0]), "check_unchanged", lambda self: None)
    with pytest.raises(DataFileError, match=r"copy\.h5ad \(X\): the file ends before byte"):
        store.read(last_rows)


def test_direct_reads_follow_chunks_in_any_file_order_and_refuse_missing_ones(
    tmp_path: Path,
) -> None:
    """Chunks written back to front lie in the file in reverse order: rows still read right.
    A chunk never written (HDF5 reads it as the fill value) rules direct reads out."""
    counts = sp.random(300, 50, density=0.3, format="csr", dtype=np.float32, random_state=0)
    counts.data = np.ceil(counts.data * 10)
    path = tmp_path / "reversed.h5ad"
    ad.AnnData(counts).write_h5ad(path)
    with h5py.File(path, "r+") as file:
        for name in ("data", "indices"):
            values = file["X"][name][:]
            del file["X"][name]
            dataset = file["X"].create_dataset(
                name, shape=values.shape, dtype=values.dtype, chunks=(97,)
            )
            for start in reversed(range(0, len(values), 97)):
                dataset[start : start + 97] = values[start : start + 97]
        layout = ValuesLayout.of(file["X"]["data"])
        assert layout is not None and (np.diff(layout.chunk_offsets) < 0).all()
    store = CellStore(str(path), backed=True)
    assert store.sources[0].reads_directly
    rows = np.random.default_rng(1).choice(300, 120, replace=False)
    got = store.read(rows)["counts_ng"].to_dense().numpy()
    np.testing.assert_array_equal(got, counts[np.sort(rows)].toarray())
    with h5py.File(tmp_path / "holes.h5", "w") as file:
        holes = file.create_dataset("values", shape=(1000,), dtype=np.int32, chunks=(100,))
        holes[:300] = 1
        assert ValuesLayout.of(holes) is None


def test_a_batch_across_more_files_than_may_stay_open(
    mouse_mappable: str, mouse_chunked: str
) -> None:
    """With max_open_files=1, reading the second file closes the first: each file's rows must
    be taken before that happens (regression: a closed reader was used, EBADF in DDP workers)."""
    expected = ad.read_h5ad(shared_data("singlecell/mouse_10k_subset_counts.h5ad")).X
    store = CellStore([mouse_mappable, mouse_chunked], backed=True, max_open_files=1)
    n = expected.shape[0]
    groups = [np.array([3, 7, n + 2, n + 9000]), np.array([10, n + 5]), np.array([n + 1])]
    for rows, batch in zip(groups, store.read_batches(groups), strict=True):
        local = np.where(rows < n, rows, rows - n)
        np.testing.assert_array_equal(
            batch["counts_ng"].to_dense().numpy(), expected[local].toarray()
        )


def test_direct_read_false_sends_a_directly_readable_file_to_h5py(mouse_mappable: str) -> None:
    direct = CellStore(mouse_mappable, backed=True)
    spans = CellStore(mouse_mappable, backed=True, direct_read=False)
    assert direct.sources[0].reads_directly and not spans.sources[0].reads_directly
    rows = np.arange(0, 10000, 7)
    assert torch.equal(
        direct.read(rows)["counts_ng"].to_dense(), spans.read(rows)["counts_ng"].to_dense()
    )
