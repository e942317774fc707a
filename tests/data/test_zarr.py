"""zarr AnnData stores (format 2 and 3, as anndata writes them) read like h5ad files: the same
batches, splits, statistics and errors, and never written to."""

from __future__ import annotations

import functools
import shutil
import warnings
from pathlib import Path
from typing import Any

import anndata as ad
import numpy as np
import pytest
import torch
import zarr

from enhanced_dm import BaseEnhancedDataModule, DataFileError, HierarchicalDataModule
from enhanced_dm.data.sources import _read_spans
from tests.helpers import shared_data
from tests.test_ddp import assert_ranks_fit_like_one_process

PBMC = "singlecell/pbmc68k_reduced_counts.h5ad"
OPTIONS: dict[str, Any] = dict(
    batch_size=64, val_fraction=0.2, seed=1, progress=False, cell_type_key="cell_type"
)


def write_zarr(adata: ad.AnnData, path: Path, zarr_format: int, chunk: int | None = None) -> Path:
    """``adata`` as anndata writes it, with ``chunk`` values per chunk of X's arrays if given."""
    previous = ad.settings.zarr_write_format
    ad.settings.zarr_write_format = zarr_format
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            adata.write_zarr(path)
            if chunk is not None:  # X again, chunked; then the metadata consolidated again
                group = zarr.open_group(path, mode="a", use_consolidated=False)
                ad.io.write_elem(group, "X", adata.X, dataset_kwargs={"chunks": (chunk,)})
                zarr.consolidate_metadata(path)
    finally:
        ad.settings.zarr_write_format = previous
    return path


@pytest.fixture(scope="module")
def pbmc() -> ad.AnnData:
    adata = ad.read_h5ad(shared_data(PBMC))
    adata.layers["counts"] = adata.X.copy()
    return adata


def batches(dm: BaseEnhancedDataModule) -> list[dict[str, torch.Tensor]]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        dm.setup("fit")
    return [dm.normalize(batch) for batch in dm.train_dataloader()]


@pytest.mark.parametrize("zarr_format", [2, 3])
@pytest.mark.parametrize("backed", [False, True])
@pytest.mark.parametrize("cls", [BaseEnhancedDataModule, HierarchicalDataModule])
def test_a_zarr_store_gives_the_batches_of_its_h5ad(
    pbmc: ad.AnnData, tmp_path: Path, zarr_format: int, backed: bool, cls: type
) -> None:
    store = write_zarr(pbmc, tmp_path / "pbmc.zarr", zarr_format, chunk=4_000)
    ours = batches(cls(str(store), backed=backed, **OPTIONS))
    theirs = batches(cls(str(shared_data(PBMC)), backed=backed, **OPTIONS))
    assert len(ours) == len(theirs)
    for mine, reference in zip(ours, theirs, strict=True):
        assert set(mine) == set(reference)
        for key, value in reference.items():
            torch.testing.assert_close(mine[key], value, rtol=0, atol=0, msg=key)


def test_backed_reads_read_each_chunk_once_and_report_the_chunk_size(
    pbmc: ad.AnnData, tmp_path: Path
) -> None:
    store = write_zarr(pbmc, tmp_path / "pbmc.zarr", 3, chunk=1_000)
    dm = BaseEnhancedDataModule(str(store), backed=True, **OPTIONS)
    dm.setup("fit")
    (source,) = dm.store.sources
    assert source.chunk_values == 1_000

    class Recorder:
        """A zarr array that records which chunks each slice touches."""

        def __init__(self, array: Any) -> None:
            self.array, self.dtype, self.touched = array, array.dtype, []

        def __getitem__(self, part: slice) -> np.ndarray:
            if part.stop > part.start:
                self.touched.append(set(range(part.start // 1000, (part.stop - 1) // 1000 + 1)))
            return self.array[part]

    group = zarr.open_group(store, mode="r")
    data = Recorder(group["X/data"])
    rows = np.sort(np.random.default_rng(0).choice(pbmc.n_obs, 256, replace=False))
    indptr = pbmc.X.indptr.astype(np.int64)
    held = _read_spans(indptr, group["X/indices"], data, rows, gap=source.chunk_values)
    chunks = [chunk for span in data.touched for chunk in span]
    assert len(chunks) == len(set(chunks)), "a chunk was read by two spans"
    np.testing.assert_array_equal(held.take(rows).data, pbmc.X[rows].data)


def test_a_layer_mixed_files_and_the_errors_name_the_store(
    pbmc: ad.AnnData, tmp_path: Path
) -> None:
    store = write_zarr(pbmc, tmp_path / "pbmc.zarr", 2)
    by_layer = batches(BaseEnhancedDataModule(str(store), layer="counts", **OPTIONS))
    by_x = batches(BaseEnhancedDataModule(str(store), **OPTIONS))
    torch.testing.assert_close(by_layer[0]["x_ng"], by_x[0]["x_ng"])
    mixed = BaseEnhancedDataModule([str(store), str(shared_data(PBMC))], backed=True, **OPTIONS)
    mixed.setup("fit")
    assert mixed.store.n_obs == 2 * pbmc.n_obs
    with pytest.raises(DataFileError, match=r"pbmc\.zarr: layer 'spliced' is missing"):
        BaseEnhancedDataModule(str(store), layer="spliced", **OPTIONS).setup("fit")
    with pytest.raises(DataFileError, match="is a directory but not a zarr store"):
        BaseEnhancedDataModule(str(tmp_path), **OPTIONS).setup("fit")
    broken = tmp_path / "broken.zarr"
    shutil.copytree(store, broken)
    shutil.rmtree(broken / "X" / "indptr")
    for backed in (False, True):
        with pytest.raises(DataFileError, match=r"broken\.zarr \(X\): indptr is not a row"):
            BaseEnhancedDataModule(str(broken), backed=backed, **OPTIONS).setup("fit")
    shutil.rmtree(broken)
    shutil.copytree(store, broken)
    next((broken / "X" / "data").rglob("0*")).unlink()  # a chunk of the values
    with pytest.raises(DataFileError, match="chunks of its values are missing"):
        BaseEnhancedDataModule(str(broken), backed=True, **OPTIONS).setup("fit")


def test_the_store_is_never_written(pbmc: ad.AnnData, tmp_path: Path) -> None:
    store = write_zarr(pbmc, tmp_path / "pbmc.zarr", 3)
    before = {file: file.stat().st_mtime_ns for file in store.rglob("*") if file.is_file()}
    for backed in (False, True):
        batches(BaseEnhancedDataModule(str(store), backed=backed, **OPTIONS))
    after = {file: file.stat().st_mtime_ns for file in store.rglob("*") if file.is_file()}
    assert after == before


@pytest.mark.slow
@pytest.mark.ddp
def test_two_ranks_on_a_zarr_store_fit_what_one_process_fits(
    pbmc: ad.AnnData, tmp_path: Path
) -> None:
    store = str(write_zarr(pbmc, tmp_path / "pbmc.zarr", 3, chunk=4_000))
    factory = functools.partial(HierarchicalDataModule, store, backed=True, **OPTIONS)
    assert_ranks_fit_like_one_process(factory, tmp_path)


def test_a_store_rewritten_during_the_run_is_refused(pbmc: ad.AnnData, tmp_path: Path) -> None:
    store = write_zarr(pbmc, tmp_path / "pbmc.zarr", 3)
    dm = BaseEnhancedDataModule(str(store), backed=True, **OPTIONS)
    dm.setup("fit")
    dm.store.read(np.arange(4))
    write_zarr(pbmc[::-1].copy(), store, 3)
    with pytest.raises(DataFileError, match=r"pbmc\.zarr \(X\): the store changed during the run"):
        dm.store.read(np.arange(4))
