"""10x Cell Ranger v3 .h5 files read directly (in memory and backed): the values, barcodes and
features of scanpy.read_10x_h5. The file is written here from the real PBMC counts (Cell Ranger's
layout: genes x cells compressed by cell); a repeated symbol shows the names made unique."""

from __future__ import annotations

import warnings
from pathlib import Path

import anndata as ad
import h5py
import numpy as np
import pytest
import scanpy as sc

from enhanced_dm import BaseEnhancedDataModule, DataFileError
from tests.helpers import shared_data

PBMC = "singlecell/pbmc68k_reduced_counts.h5ad"


def write_10x_h5(adata: ad.AnnData, path: Path, feature_types: list[str] | None = None) -> Path:
    """``adata``'s counts in the Cell Ranger v3 layout (int32 values, as Cell Ranger writes)."""
    csr = adata.X.tocsr()
    names = adata.var_names.to_numpy().astype(object)
    names[1] = names[0]  # Cell Ranger references repeat some symbols
    types = feature_types or ["Gene Expression"] * adata.n_vars
    with h5py.File(path, "w") as file:
        matrix = file.create_group("matrix")
        matrix["barcodes"] = adata.obs_names.to_numpy().astype("S")
        matrix["data"] = csr.data.astype(np.int32)
        matrix["indices"] = csr.indices.astype(np.int64)
        matrix["indptr"] = csr.indptr.astype(np.int64)
        matrix["shape"] = np.array([adata.n_vars, adata.n_obs], dtype=np.int32)
        features = matrix.create_group("features")
        features["id"] = np.array([f"ENSG{i:011d}" for i in range(adata.n_vars)], dtype="S")
        features["name"] = names.astype("S")
        features["feature_type"] = np.array(types, dtype="S")
        features["genome"] = np.array(["GRCh38"] * adata.n_vars, dtype="S")
        features["_all_tag_keys"] = np.array([b"genome"])
    return path


@pytest.fixture(scope="module")
def h5_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    adata = ad.read_h5ad(shared_data(PBMC))
    return write_10x_h5(adata, tmp_path_factory.mktemp("tenx") / "filtered_feature_bc_matrix.h5")


@pytest.mark.parametrize("backed", [False, True])
def test_a_10x_h5_reads_as_scanpy_reads_it(h5_path: Path, backed: bool) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        reference = sc.read_10x_h5(h5_path)
        reference.var_names_make_unique()
    dm = BaseEnhancedDataModule(str(h5_path), backed=backed, progress=False, val_fraction=0.0)
    dm.setup("fit")
    assert dm.var_names == reference.var_names.tolist()
    (source,) = dm.store.sources
    assert source.obs.index.tolist() == reference.obs_names.tolist()
    assert source.var[["gene_ids", "feature_types", "genome"]].equals(
        reference.var[["gene_ids", "feature_types", "genome"]]
    )
    assert dm.store.is_counts
    batch = dm.store.read(np.arange(reference.n_obs))
    counts = batch["counts_ng"].to_dense().numpy()
    np.testing.assert_array_equal(counts, reference.X.toarray())
    np.testing.assert_array_equal(batch["total_counts_n"].numpy(), reference.X.sum(1).A1)


def test_multimodal_10x_files_are_refused_with_what_to_do(tmp_path: Path) -> None:
    adata = ad.read_h5ad(shared_data(PBMC))
    types = ["Gene Expression"] * (adata.n_vars - 2) + ["Antibody Capture"] * 2
    path = write_10x_h5(adata, tmp_path / "multi.h5", types)
    with pytest.raises(DataFileError, match=r"multi\.h5 \(matrix\): holds \['Antibody Capture'\]"):
        BaseEnhancedDataModule(str(path), progress=False).setup("fit")
