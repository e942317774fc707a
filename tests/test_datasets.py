"""pbmc68k() rebuilds scanpy's PBMC counts exactly; bundled_path() finds packaged files."""

from __future__ import annotations

import warnings

import anndata
import numpy as np
import pytest
import scanpy as sc
from anndata.tests.helpers import assert_equal

from enhanced_dm.datasets import RESOURCES_DIR, bundled_path, pbmc68k
from enhanced_dm.errors import DataFileError
from tests.helpers import shared_data


@pytest.fixture(scope="module")
def pbmc() -> anndata.AnnData:
    return pbmc68k()


def _scanpy_pbmc() -> anndata.AnnData:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return sc.datasets.pbmc68k_reduced()


def test_pbmc68k_is_integer_counts(pbmc: anndata.AnnData) -> None:
    assert pbmc.shape == (700, 765)
    assert pbmc.X.dtype == np.int32
    assert pbmc.X.has_sorted_indices
    assert pbmc.X.data.min() >= 1
    assert pbmc.obs["cell_type"].cat.categories.size == 10
    # The library size covers all genes of the original file, more than the 765 kept here.
    assert (pbmc.obs["total_counts_all_genes_original"] >= pbmc.X.sum(axis=1).A1).all()


def test_pbmc68k_rows_match_scanpy_raw_after_normalize_total_log1p(pbmc: anndata.AnnData) -> None:
    reference = _scanpy_pbmc()
    np.testing.assert_array_equal(pbmc.obs_names, reference.obs_names)
    np.testing.assert_array_equal(pbmc.var_names, reference.raw.var_names)
    raw_ng = reference.raw.X.toarray().astype(np.float64)

    # scanpy made raw.X as log1p(CP10k) with the library size over ALL genes of the original file
    # (obs n_counts, kept as total_counts_all_genes_original), before keeping 765 genes. scanpy's
    # normalize_total only sees the 765 genes, so rescale each row by the kept fraction of counts.
    rebuilt = pbmc.copy()
    rebuilt.X = rebuilt.X.astype(np.float64)
    sc.pp.normalize_total(rebuilt, target_sum=1e4)
    kept_fraction_n = pbmc.X.sum(axis=1).A1 / pbmc.obs["total_counts_all_genes_original"].to_numpy()
    rebuilt.X = rebuilt.X.multiply(kept_fraction_n[:, None]).tocsr()
    sc.pp.log1p(rebuilt)

    # Counts are whole numbers, so the match is up to rounding (largest residual 0.08 counts).
    np.testing.assert_allclose(rebuilt.X.toarray(), raw_ng, atol=0.01, rtol=0)
    np.testing.assert_array_equal(rebuilt.X.toarray() > 0, raw_ng > 0)


def test_pbmc68k_equals_the_shared_file(pbmc: anndata.AnnData) -> None:
    shared = anndata.read_h5ad(shared_data("singlecell/pbmc68k_reduced_counts.h5ad"))
    assert_equal(pbmc, shared)
    for part in ("data", "indices", "indptr"):
        np.testing.assert_array_equal(getattr(pbmc.X, part), getattr(shared.X, part))
        assert getattr(pbmc.X, part).dtype == getattr(shared.X, part).dtype
    assert pbmc.obs.equals(shared.obs)
    assert list(pbmc.obs.columns) == list(shared.obs.columns)


def test_pbmc68k_cell_type_is_scanpys_bulk_labels(pbmc: anndata.AnnData) -> None:
    reference = _scanpy_pbmc()
    assert pbmc.obs["cell_type"].equals(reference.obs["bulk_labels"].rename("cell_type"))


def test_bundled_path_names_what_is_available() -> None:
    assert (RESOURCES_DIR / "MANIFEST.md").is_file()
    with pytest.raises(DataFileError, match=r"no bundled file named 'nope\.gmt'"):
        bundled_path("nope.gmt")


def test_the_bundled_time_course_is_a_gene_subset_of_the_shared_hsmm_file() -> None:
    import anndata as ad
    import numpy as np

    from enhanced_dm.datasets import hsmm_timecourse
    from tests.helpers import shared_data

    bundled = hsmm_timecourse()
    full = ad.read_h5ad(shared_data("singlecell/hsmm_myoblast_timecourse_fpkm.h5ad"))
    assert bundled.shape == (271, 1000) and set(bundled.var_names) <= set(full.var_names)
    same = full[:, bundled.var_names]
    np.testing.assert_array_equal(bundled.X.toarray(), same.X.toarray().astype(np.float32))
    assert bundled.obs["Hours"].tolist() == full.obs["Hours"].tolist()
