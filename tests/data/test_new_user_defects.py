"""Defects a new user found (correctness round 2): each test fails on the code before its fix.

Broken variants of the real files are built under tmp_path; the shared data are only read.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import anndata as ad
import h5py
import numpy as np
import pytest
import scipy.sparse as sp

from enhanced_dm import BaseEnhancedDataModule, ConfigError, DataFileError
from enhanced_dm.annotations import GeneMatcher
from enhanced_dm.cli import check_checkpoint
from enhanced_dm.data import CellStore
from tests.helpers import shared_data

PBMC = "singlecell/pbmc68k_reduced_counts.h5ad"
WU2020 = "singlecell/wu2020_tcells_counts.h5ad"


@pytest.fixture(scope="module")
def pbmc() -> ad.AnnData:
    return ad.read_h5ad(shared_data(PBMC))


def make_dm(data, **options) -> BaseEnhancedDataModule:
    defaults = {"batch_size": 128, "progress": False, "val_fraction": 0.2}
    return BaseEnhancedDataModule(data=data, **(defaults | options))


# ------------------------------------------------------------------- 2. counts >= 2**31
@pytest.mark.parametrize("dtype", [np.float64, np.int64])
@pytest.mark.parametrize("backed", [False, True])
def test_a_count_beyond_int32_is_refused_naming_file_and_value(
    pbmc: ad.AnnData, tmp_path: Path, dtype, backed: bool
) -> None:
    adata = pbmc.copy()
    adata.X = sp.csr_matrix(adata.X.astype(dtype))
    adata.X.data[5] = 3e9
    path = tmp_path / "huge.h5ad"
    adata.write_h5ad(path)
    with pytest.raises(DataFileError, match=r"huge\.h5ad.*count of 3000000000.*int32"):
        make_dm(str(path), backed=backed).setup("fit")


def test_a_collate_item_beyond_int32_is_refused() -> None:
    from enhanced_dm import BaseEnhancedLoader

    loader = BaseEnhancedLoader(data=str(shared_data(PBMC)), progress=False)
    row = np.zeros(len(loader.var_names))
    row[3] = 3e9
    with pytest.raises(DataFileError, match=r"item 0.*int32"):
        loader([row])


# ----------------------------------------------------------------------- 3. genes=
def test_unknown_genes_are_a_config_error_listing_them() -> None:
    with pytest.raises(ConfigError, match=r"2 of 3 names are not genes.*\['NOT_A_GENE', 'XYZ1'\]"):
        make_dm(str(shared_data(PBMC)), genes=["CD4", "NOT_A_GENE", "XYZ1"]).setup("fit")
    with pytest.raises(ConfigError, match="3 of 3 names"):
        make_dm(str(shared_data(PBMC)), genes=["a", "b", "c"]).setup("fit")


def test_gene_names_match_case_insensitively_where_no_exact_match_exists(caplog) -> None:
    dm = make_dm(str(shared_data(PBMC)), genes=["cd4", "CD8A", "Cd79a"])
    dm.setup("fit")
    assert dm.var_names == ["CD4", "CD8A", "CD79A"]  # the data's spellings
    full = make_dm(str(shared_data(PBMC)))
    full.setup("fit")
    batch = dm.store.read(np.arange(20))["counts_ng"].to_dense()
    columns = [full.var_names.index(name) for name in dm.var_names]
    expected = full.store.read(np.arange(20))["counts_ng"].to_dense()[:, columns]
    assert bool((batch == expected).all()) and int(batch.sum()) > 0
    with caplog.at_level(logging.WARNING, logger="enhanced_dm"):
        padded = make_dm(str(shared_data(PBMC)), genes=["CD4", "NOPE"], missing_genes="zeros")
        padded.setup("fit")
    assert padded.var_names == ["CD4", "NOPE"]
    assert "1 of 2 names are not in the data" in caplog.text
    assert int(padded.store.read(np.arange(700))["counts_ng"].to_dense()[:, 1].sum()) == 0


# --------------------------------------------------- 4. a file overwritten during a run
def test_a_backed_file_overwritten_in_place_is_refused(pbmc: ad.AnnData, tmp_path: Path) -> None:
    path = tmp_path / "pbmc.h5ad"
    pbmc.write_h5ad(path)
    with h5py.File(path, "r") as file:
        values = file["X/data"]
        offset = (
            values.id.get_offset()
            if values.chunks is None
            else values.id.get_chunk_info(0).byte_offset
        )
    dm = make_dm(str(path), backed=True, batch_size=32)
    dm.setup("fit")
    next(iter(dm.train_dataloader()))
    size = path.stat().st_size
    with open(path, "r+b") as file:  # same size, other values: what an in-place rewrite leaves
        file.seek(offset)
        file.write(bytes(range(256)) * 16)
    assert path.stat().st_size == size
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    with pytest.raises(DataFileError, match=r"pbmc\.h5ad.*changed during the run"):
        next(iter(dm.train_dataloader()))


# -------------------------------------------------------- 5. case-colliding symbols
def test_exact_symbols_win_over_case_insensitive_matches() -> None:
    matcher = GeneMatcher(["C10orf68", "C10ORF68", "CD4"])
    assert matcher.indices(["C10ORF68"]).tolist() == [1]
    assert matcher.indices(["C10orf68"]).tolist() == [0]
    assert matcher.indices(["c10orf68"]).tolist() == [0, 1]  # no exact spelling: both
    assert matcher.indices(["cd4"]).tolist() == [2]
    result = matcher.membership({"set": ["C10ORF68", "CD4", "c10orf68"]})
    assert result.membership_pg.toarray().tolist() == [[1.0, 1.0, 1.0]]
    assert result.ambiguous_count == 2
    only_exact = matcher.membership({"set": ["C10ORF68"]})
    assert only_exact.membership_pg.toarray().tolist() == [[0.0, 1.0, 0.0]]


def test_ambiguous_symbols_are_counted_in_the_component_report(tmp_path: Path) -> None:
    from enhanced_dm.components import PathwayComponent

    adata = ad.read_h5ad(shared_data(PBMC))
    adata = adata[:, :40].copy()
    names = list(adata.var_names)
    names[0], names[1] = "C10orf68", "C10ORF68"
    adata.var_names = names
    gmt = tmp_path / "sets.gmt"
    gmt.write_text("S\tdesc\tC10ORF68\t" + "\t".join(names[2:20]) + "\n")
    component = PathwayComponent(str(gmt), min_pathway_size=5)
    component.setup(CellStore(adata))
    assert component.require_selection().gene_index().tolist() == [list(range(1, 20))]
    assert component.report()["ambiguous_symbols_count"] == 1


# -------------------------------------------------------------------- 6. checkpoints
def test_a_bad_checkpoint_is_one_clear_line(tmp_path: Path) -> None:
    missing = tmp_path / "missing.ckpt"
    with pytest.raises(ConfigError, match=r"missing\.ckpt: no such file"):
        check_checkpoint(str(missing))
    empty = tmp_path / "empty.ckpt"
    empty.write_bytes(b"")
    with pytest.raises(ConfigError, match=r"empty\.ckpt: the file is empty"):
        check_checkpoint(str(empty))
    import torch

    good = tmp_path / "good.ckpt"
    torch.save({"state_dict": {"w": torch.ones(1000)}}, good)
    check_checkpoint(str(good))
    truncated = tmp_path / "truncated.ckpt"
    truncated.write_bytes(good.read_bytes()[:-300])
    with pytest.raises(ConfigError, match="truncated or not a checkpoint"):
        check_checkpoint(str(truncated))
    check_checkpoint("last")  # Lightning resolves its own names


# ------------------------------------------------------------------ 8. 10x Cell Ranger
def test_a_cell_ranger_h5_is_named_with_how_to_read_it(tmp_path: Path) -> None:
    path = tmp_path / "filtered_feature_bc_matrix.h5"
    with h5py.File(path, "w") as file:
        matrix = file.create_group("matrix")
        for name in ("barcodes", "data", "indices", "indptr", "shape"):
            matrix.create_dataset(name, data=np.zeros(3, dtype=np.int64))
    with pytest.raises(DataFileError, match=r"10x Genomics Cell Ranger \.h5.*read_10x_h5"):
        make_dm(str(path)).setup("fit")


# ---------------------------------------------------------- 9. NaN in a batch column
def test_missing_batch_labels_are_warned_with_their_number(pbmc: ad.AnnData) -> None:
    adata = pbmc.copy()
    labels = adata.obs["cell_type"].astype(object).to_numpy()
    labels[:7] = np.nan
    adata.obs["donor"] = labels
    with pytest.warns(UserWarning, match=r"'donor' \(batch_n\): 7 of 700 cells have no value"):
        make_dm(adata, batch_key="donor", batch_aware_normalization=True).setup("fit")


# -------------------------------------------------------------------- 10. cache hits
def test_a_cache_hit_is_logged_with_its_path(tmp_path: Path, caplog) -> None:
    make_dm(str(shared_data(PBMC)), stats_cache_dir=tmp_path).setup("fit")
    with caplog.at_level(logging.INFO, logger="enhanced_dm"):
        dm = make_dm(str(shared_data(PBMC)), stats_cache_dir=tmp_path)
        dm.setup("fit")
    assert f"loaded from the cache {dm.stats_cache_path}" in caplog.text


# ----------------------------------------------------------- 11. CI must not skip
def test_missing_shared_data_fails_under_ci(monkeypatch) -> None:
    from _pytest.outcomes import Failed, Skipped

    from tests import helpers

    monkeypatch.setenv("CI", "true")
    with pytest.raises(Failed, match="CI=true"):
        helpers.shared_data("singlecell/not_there.h5ad")
    monkeypatch.setenv("CI", "")
    with pytest.raises(Skipped):
        helpers.shared_data("singlecell/not_there.h5ad")
