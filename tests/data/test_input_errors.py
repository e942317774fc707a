"""Bad input is refused at setup with a DataFileError / FittingError naming the file and the key.

One test per input fault of issue 7. Broken variants of the real files are built under tmp_path;
the shared data are only read.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import warnings
from pathlib import Path

import anndata as ad
import h5py
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch

from enhanced_dm import BaseEnhancedDataModule
from enhanced_dm.data import CellStore
from enhanced_dm.errors import DataFileError, EnhancedDMError, FittingError
from enhanced_dm.transforms.base import Transform
from enhanced_dm.transforms.registry import GENE_NORMALIZATIONS, GeneNormalizationSpec
from tests.helpers import shared_data

PBMC = "singlecell/pbmc68k_reduced_counts.h5ad"
HSMM = "singlecell/hsmm_myoblast_timecourse_fpkm.h5ad"


@pytest.fixture(scope="module")
def pbmc() -> ad.AnnData:
    return ad.read_h5ad(shared_data(PBMC))


@pytest.fixture
def pbmc_copy(tmp_path: Path) -> Path:
    path = tmp_path / "pbmc.h5ad"
    shutil.copyfile(shared_data(PBMC), path)
    return path


def make_dm(data, **options) -> BaseEnhancedDataModule:
    defaults = {"batch_size": 128, "progress": False, "val_fraction": 0.2}
    return BaseEnhancedDataModule(data=data, **(defaults | options))


def predict_all(dm: BaseEnhancedDataModule) -> dict[str, np.ndarray]:
    """x_ng and cell_index_n of every cell through predict_dataloader()."""
    dm.setup("predict")
    outs = [dm.normalize(batch) for batch in dm.predict_dataloader()]
    return {key: torch.cat([o[key] for o in outs]).numpy() for key in ("x_ng", "cell_index_n")}


# ------------------------------------------------------------------------------- files
def test_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(DataFileError, match=r"nowhere.h5ad: data file not found"):
        CellStore(tmp_path / "nowhere.h5ad")


def test_directory_is_not_a_data_file(tmp_path: Path) -> None:
    with pytest.raises(DataFileError, match="is a directory but not a zarr store"):
        CellStore(tmp_path)


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode")
def test_unreadable_file_is_named(pbmc_copy: Path) -> None:
    pbmc_copy.chmod(0)
    with pytest.raises(DataFileError, match=r"pbmc.h5ad: cannot be read"):
        CellStore(pbmc_copy)


def test_text_file_is_not_an_h5ad(tmp_path: Path) -> None:
    path = tmp_path / "cells.h5ad"
    path.write_text("barcode,gene,count\nAAAC,CD3E,4\n")
    with pytest.raises(DataFileError, match=r"cells.h5ad: not a readable h5ad file \(OSError"):
        CellStore(path)


@pytest.mark.parametrize("backed", [False, True])
@pytest.mark.parametrize("kept", [0.3, 0.99])
def test_truncated_h5ad_is_refused(tmp_path: Path, backed: bool, kept: float) -> None:
    content = shared_data(PBMC).read_bytes()
    path = tmp_path / "truncated.h5ad"
    path.write_bytes(content[: int(len(content) * kept)])
    with pytest.raises(DataFileError, match=r"truncated.h5ad: not a readable h5ad file.*truncated"):
        CellStore(path, backed=backed)


def test_missing_x_is_named(pbmc_copy: Path) -> None:
    with h5py.File(pbmc_copy, "r+") as file:
        del file["X"]
    with pytest.raises(DataFileError, match=r"pbmc.h5ad: X is missing \(layers present: \[\]\)"):
        CellStore(pbmc_copy)


def test_missing_layer_lists_the_layers(pbmc: ad.AnnData) -> None:
    adata = pbmc.copy()
    adata.layers["raw"] = adata.X.copy()
    with pytest.raises(DataFileError, match=r"layer 'counts' is missing \(layers: \['raw'\]\)"):
        CellStore(adata, layer="counts")


def test_anndata_without_x_is_refused(pbmc: ad.AnnData) -> None:
    with pytest.raises(DataFileError, match=r"\(X\): the matrix is missing \(X is None\)"):
        CellStore(ad.AnnData(obs=pbmc.obs, var=pbmc.var))


def test_csc_is_refused_backed_and_converted_in_memory(tmp_path: Path, pbmc: ad.AnnData) -> None:
    adata = pbmc.copy()
    adata.X = sp.csc_matrix(adata.X)
    path = tmp_path / "csc.h5ad"
    adata.write_h5ad(path)
    with pytest.raises(DataFileError, match=r"csc.h5ad \(X\): stored as csc_matrix; backed"):
        CellStore(path, backed=True)
    store = CellStore(path)  # in memory the matrix is converted to CSR
    dense = store.read(np.arange(5))["counts_ng"].to_dense().numpy()
    np.testing.assert_array_equal(dense, pbmc.X[:5].toarray())


@pytest.mark.parametrize("backed", [False, True])
def test_string_matrix_is_refused(pbmc_copy: Path, backed: bool) -> None:
    with h5py.File(pbmc_copy, "r+") as file:
        del file["X"]
        file.create_dataset("X", data=np.full((700, 765), b"1"))
        file["X"].attrs["encoding-type"] = "array"
        file["X"].attrs["encoding-version"] = "0.2.0"
    with pytest.raises(DataFileError, match=r"\(X\): the matrix has unsupported dtype \|S1"):
        CellStore(pbmc_copy, backed=backed)


def test_string_anndata_is_refused() -> None:
    adata = ad.AnnData(X=np.array([["1", "2"], ["3", "4"]]))
    with pytest.raises(DataFileError, match="unsupported dtype <U1; expected integer counts"):
        CellStore(adata)


# ------------------------------------------------------------------------------ values
def with_value(pbmc: ad.AnnData, position: int, value: float) -> ad.AnnData:
    adata = pbmc.copy()
    adata.X = adata.X.astype(np.float32)
    adata.X.data[position] = value
    return adata


@pytest.mark.parametrize("backed", [False, True])
def test_negative_values_are_refused(tmp_path: Path, pbmc: ad.AnnData, backed: bool) -> None:
    path = tmp_path / "negative.h5ad"
    with_value(pbmc, 1000, -2.0).write_h5ad(path)
    with pytest.raises(DataFileError, match=r"negative.h5ad \(X\): found 1 negative value\(s\)"):
        CellStore(path, backed=backed)


@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_non_finite_values_are_refused(pbmc: ad.AnnData, value: float) -> None:
    kind = "1 NaN and 0 inf" if np.isnan(value) else "0 NaN and 1 inf"
    with pytest.raises(DataFileError, match=f"found {kind} among the 174,400 stored values"):
        CellStore(with_value(pbmc, 99_999, value))


def test_non_integer_values_are_refused_when_counts_are_required() -> None:
    with pytest.raises(DataFileError, match=r"\(X\): counts=True but found .* non-integer value"):
        CellStore(shared_data(HSMM), counts=True)


def test_counts_auto_reports_its_verdict(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="enhanced_dm.data.store"):
        fpkm = CellStore(shared_data(HSMM), backed=True)
        counts = CellStore(shared_data(PBMC))
    assert not fpkm.is_counts and counts.is_counts
    assert "counts='auto' concluded NOT integer counts" in fpkm.counts_verdict
    assert "counts='auto' concluded integer counts" in counts.counts_verdict
    assert fpkm.counts_verdict in caplog.text and counts.counts_verdict in caplog.text
    # honest about how much it looked at: HSMM stores 1.8 M values, the backed check samples 1 M
    (check,) = fpkm.value_checks
    assert not check.complete and check.values_checked == 1_000_000
    assert check.values_stored == 1_799_380
    assert counts.value_checks[0].complete and counts.value_checks[0].values_checked == 174_400


def test_auto_warns_when_a_transform_needs_counts(monkeypatch: pytest.MonkeyPatch) -> None:
    class Identity(Transform):
        def forward(self, batch):
            return {"x_ng": batch["x_ng"]}

    spec = GeneNormalizationSpec(lambda *args: Identity(), needs_raw_counts=True)
    monkeypatch.setitem(GENE_NORMALIZATIONS, "raw_demo", spec)
    dm = make_dm(shared_data(HSMM), normalization_type="raw_demo", per_cell_normalization=False)
    with pytest.warns(
        UserWarning, match="'raw_demo' expects raw integer counts, but counts='auto'"
    ):
        dm.setup("fit")


def test_sampled_backed_file_is_checked_as_rows_are_read(
    tmp_path: Path, pbmc: ad.AnnData, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A backed file too large to read whole at setup is sampled; the rest is checked on read,
    so the fitting pass of setup('fit') finds a bad train cell before any training."""
    monkeypatch.setattr("enhanced_dm.data.store.VALUE_CHECK_MAX_VALUES", 1_600)
    path = tmp_path / "late_fraction.h5ad"
    adata = with_value(pbmc, 0, 1.0)
    row = 500  # its values lie between the sampled spans
    adata.X.data[adata.X.indptr[row] + 3] = 2.5
    adata.write_h5ad(path)
    store = CellStore(path, backed=True)
    assert store.is_counts and not store.value_checks[0].complete  # the sample saw integers only
    store.read(np.arange(400))  # clean rows read fine
    with pytest.raises(DataFileError, match=r"non-integer value.*\[found while reading row 500"):
        store.read(np.arange(480, 520))
    dm = make_dm(str(path), backed=True, val_fraction=0.0)
    with pytest.raises(DataFileError, match="counts='auto' judged the file to hold counts"):
        dm.setup("fit")


# --------------------------------------------------------------------------- names, keys
def test_duplicate_var_names_are_refused(pbmc: ad.AnnData) -> None:
    adata = pbmc.copy()
    adata.var_names = [*adata.var_names[:-1], adata.var_names[0]]
    with pytest.raises(DataFileError, match=r"var_names contain duplicates, e.g. \['HES4'\]"):
        CellStore(adata)


def test_duplicate_obs_names_are_allowed(pbmc: ad.AnnData) -> None:
    """Rows are identified by position (cell_index_n), so shared barcodes are harmless."""
    adata = pbmc.copy()
    adata.obs_names = ["AAAC-1"] * adata.n_obs
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # anndata's own "obs_names not unique"
        out = predict_all(make_dm(adata, val_fraction=0.0))
    assert out["cell_index_n"].tolist() == list(range(700))


def test_empty_dataset_is_refused(pbmc: ad.AnnData) -> None:
    with pytest.raises(DataFileError, match=r"the dataset has no cells \(n_obs = 0\)"):
        CellStore(pbmc[:0].copy())
    with pytest.raises(DataFileError, match="the gene space is empty"):
        CellStore(pbmc[:, :0].copy())


def test_empty_train_split_is_refused(pbmc: ad.AnnData) -> None:
    tiny = pbmc[:3].copy()
    with pytest.raises(FittingError, match=r"train split is empty: val_fraction=0.5 .* of 3"):
        make_dm(tiny, val_fraction=0.5, test_fraction=0.4).setup("fit")
    labelled = pbmc.copy()
    labelled.obs["split"] = np.where(np.arange(700) % 2, "val", "test")
    with pytest.raises(FittingError, match="obs column 'split' \\(split_key\\) labels no cell"):
        make_dm(labelled, split_key="split").setup("fit")


def test_missing_obs_key_lists_the_available_keys(pbmc: ad.AnnData) -> None:
    with pytest.raises(
        DataFileError, match=r"obs column 'donor' is missing \(requested for batch_n\)"
    ):
        make_dm(pbmc, batch_key="donor").setup("fit")
    try:
        make_dm(pbmc, batch_key="donor").setup("fit")
    except EnhancedDMError as error:
        assert "available obs keys: ['G2M_score', 'S_score', 'cell_type'" in str(error)


# ---------------------------------------------------------------------- groups, zeros
def test_category_without_train_cells_warns_once_and_uses_global_statistics(
    pbmc: ad.AnnData,
) -> None:
    adata = pbmc.copy()
    lonely = np.arange(700) % 7 == 0
    adata.obs["split"] = np.where(lonely, "val", "train")
    adata.obs["batch"] = np.where(lonely, "lonely", np.where(np.arange(700) % 2, "a", "b"))
    dm = make_dm(adata, split_key="split", batch_key="batch", batch_aware_normalization=True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        dm.setup("fit")
        out = predict_all(dm)
        predict_all(dm)
    fallback = [w for w in caught if "have no train cells" in str(w.message)]
    assert len(fallback) == 1 and "['lonely']" in str(fallback[0].message)
    z_score = dm.pipeline[-1]
    log_x = np.log1p(adata.X.toarray() / adata.X.sum(1).A * 1e4).astype(np.float32)
    expected = (log_x[lonely] - z_score.center_g.numpy()) / z_score.scale_g.numpy()
    np.testing.assert_allclose(out["x_ng"][lonely], expected, atol=1e-4)


def test_zero_count_cells_and_all_zero_genes_are_counted_never_nan(pbmc: ad.AnnData) -> None:
    adata = pbmc.copy()
    dense = adata.X.toarray()
    dense[[3, 10, 400]] = 0
    dense[:, [0, 7]] = 0
    adata.X = sp.csr_matrix(dense)
    adata.obs = pd.DataFrame(index=adata.obs_names)
    dm = make_dm(adata, val_fraction=0.0)
    out = predict_all(dm)
    assert np.isfinite(out["x_ng"]).all()
    assert not out["x_ng"][:, [0, 7]].any()  # all-zero genes: scale 1, centre 0
    stats = dm.get_normalization_stats()["densify"]
    assert stats["zero_count_cells"] == int((dense.sum(1) == 0).sum()) >= 3
    assert stats["all_zero_genes"] == int((dense.sum(0) == 0).sum()) >= 2
    assert all(entry["nonfinite_count"] == 0 for entry in dm.get_normalization_stats().values())


# ----------------------------------------------------------------------- never modified
def digest(path: Path) -> tuple[str, int, int]:
    stat = path.stat()
    return hashlib.sha256(path.read_bytes()).hexdigest(), stat.st_size, stat.st_mtime_ns


@pytest.mark.parametrize("backed", [False, True])
def test_input_files_are_opened_read_only_and_left_unchanged(pbmc_copy: Path, backed: bool) -> None:
    before = digest(pbmc_copy)
    dm = make_dm(str(pbmc_copy), backed=backed, cell_type_key="cell_type")
    dm.setup("fit")
    for batch in dm.train_dataloader():  # one epoch
        dm.normalize(batch)
    predict_all(dm)
    if backed:
        handle = dm.store.sources[0]._file
        assert handle is not None and handle.mode == "r"
    dm.store.sources[0].close()
    assert digest(pbmc_copy) == before


def test_check_values_names_the_place_for_other_inputs() -> None:
    """The same check, public for batches built from user items (seed-compatible loaders)."""
    from enhanced_dm.data.store import check_values

    assert check_values(np.array([0.0, 3.0]), "item 0", require_integer=True)
    assert not check_values(np.array([0.5]), "item 1", require_integer=False)
    with pytest.raises(DataFileError, match=r"item 2: counts=True but found 1 non-integer"):
        check_values(np.array([1.5]), "item 2", require_integer=True)
    with pytest.raises(DataFileError, match=r"item 3: found 1 negative value"):
        check_values(np.array([-1]), "item 3", require_integer=False)


@pytest.mark.parametrize("backed", [False, True])
@pytest.mark.parametrize("bad_index", [-1, 765])
def test_out_of_range_column_index_is_refused(
    pbmc_copy: Path, pbmc: ad.AnnData, backed: bool, bad_index: int
) -> None:
    # Densified, an index past the last gene would land in the next cell's row: refuse it.
    position = 5000
    row = int(np.searchsorted(pbmc.X.indptr, position, side="right") - 1)
    assert bad_index < 0 or bad_index >= pbmc.n_vars
    with h5py.File(pbmc_copy, "r+") as file:
        file["X/indices"][position] = bad_index
    store = CellStore(pbmc_copy, backed=backed)
    with pytest.raises(
        DataFileError,
        match=rf"pbmc.h5ad \(X\): row {row} stores the column index {bad_index}; "
        rf"expected indices in \[0, {pbmc.n_vars}\)",
    ):
        store.read(np.arange(store.n_obs))


@pytest.mark.parametrize("backed", [False, True])
def test_a_gene_stored_twice_in_a_row_is_refused(
    pbmc_copy: Path, pbmc: ad.AnnData, backed: bool
) -> None:
    # scipy and scanpy sum repeated entries, a densified batch would keep one: refuse them.
    row = 0
    first = int(pbmc.X.indptr[row])
    gene = int(pbmc.X.indices[first])
    if backed:
        with h5py.File(pbmc_copy, "r+") as file:
            file["X/indices"][first + 1] = gene
        data = pbmc_copy
    else:
        data = pbmc.copy()
        data.X.indices[first + 1] = gene
    with pytest.raises(
        DataFileError,
        match=rf"\(X\): row {row} stores gene '{pbmc.var_names[gene]}' \(column {gene}\) more "
        r"than once; expected each gene at most once per row",
    ):
        CellStore(data, backed=backed)


def test_unsorted_but_unique_column_indices_are_accepted(pbmc: ad.AnnData) -> None:
    shuffled = pbmc.copy()
    matrix = shuffled.X
    rng = np.random.default_rng(0)
    for row in range(matrix.shape[0]):
        start, stop = matrix.indptr[row], matrix.indptr[row + 1]
        order = start + rng.permutation(stop - start)
        matrix.indices[start:stop], matrix.data[start:stop] = (
            matrix.indices[order].copy(),
            matrix.data[order].copy(),
        )
    assert not sp.csr_matrix(matrix).has_sorted_indices
    rows = np.arange(pbmc.n_obs)
    got = CellStore(shuffled).read(rows)["counts_ng"].to_dense()
    expected = CellStore(pbmc).read(rows)["counts_ng"].to_dense()
    assert torch.equal(got, expected)


def test_a_repeated_gene_is_found_past_the_first_chunk_of_rows(
    pbmc: ad.AnnData, monkeypatch: pytest.MonkeyPatch
) -> None:
    import enhanced_dm.data.store as store_module

    monkeypatch.setattr(store_module, "_STRUCTURE_CHUNK", 5_000)  # many chunks of rows
    data = pbmc.copy()
    row = 600
    first = int(data.X.indptr[row])
    data.X.indices[first + 1] = data.X.indices[first]
    with pytest.raises(DataFileError, match=rf"row {row} stores gene"):
        CellStore(data)


def test_a_backed_file_without_cells_beside_others_is_read(
    tmp_path: Path, pbmc: ad.AnnData
) -> None:
    # The setup checks sample rows of each file; a file with no rows has none to sample.
    pbmc.write_h5ad(tmp_path / "part_0.h5ad")
    pbmc[:0].copy().write_h5ad(tmp_path / "part_1.h5ad")
    store = CellStore(str(tmp_path / "part_*.h5ad"), backed=True)
    assert store.n_obs == pbmc.n_obs
    assert store.read(np.arange(5))["counts_ng"].shape == (5, pbmc.n_vars)
