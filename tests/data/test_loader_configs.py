"""Every reading configuration the benchmarks use serves every train cell exactly once per epoch,
in a seeded, reproducible order, and cutting batches from a pool read equals reading each batch."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from enhanced_dm import BaseEnhancedDataModule
from tests.helpers import shared_data

MOUSE = "singlecell/mouse_10k_subset_counts.h5ad"
LOADER_ONLY = {
    "normalization_type": "none",
    "per_cell_normalization": False,
    "per_gene_normalization": False,
    "log1p": False,
}


def epoch(dm: BaseEnhancedDataModule, number: int) -> list[dict[str, torch.Tensor]]:
    loader = dm.train_dataloader()
    loader.sampler.set_epoch(number)
    batches = list(loader)
    assert len(batches) == len(loader)
    return batches


@pytest.mark.parametrize("block_size", [1, 16, 64, 256])
@pytest.mark.parametrize("reader", ["in memory", "h5py", "direct"])
def test_each_configuration_serves_every_cell_once_reproducibly(
    block_size: int, reader: str, mouse_mappable: str, tmp_path
) -> None:
    options = dict(
        data=mouse_mappable if reader == "direct" else shared_data(MOUSE),
        backed=reader != "in memory",
        direct_read=reader == "direct",
        block_size=block_size,
        batch_size=100,
        val_fraction=0.2,
        seed=11,
        stats_cache_dir=str(tmp_path),
        progress=False,
        **LOADER_ONLY,
    )
    dm = BaseEnhancedDataModule(**options)
    dm.setup("fit")
    if reader != "in memory":
        assert dm.store.sources[0].reads_directly is (reader == "direct")
    first = epoch(dm, 0)
    served = np.concatenate([batch["cell_index_n"].numpy() for batch in first])
    assert np.array_equal(np.sort(served), np.sort(dm.split["train"]))
    assert not np.array_equal(served, np.sort(served))  # shuffled
    again = BaseEnhancedDataModule(**options)
    again.setup("fit")
    for ours, theirs in zip(first, epoch(again, 0), strict=True):
        assert torch.equal(ours["cell_index_n"], theirs["cell_index_n"])
    for batch in first[:3]:  # a batch cut from its pool equals a direct read of its rows
        direct = dm.store.read(batch["cell_index_n"].numpy())
        assert torch.equal(batch["counts_ng"].to_dense(), direct["counts_ng"].to_dense())
        assert torch.equal(batch["total_counts_n"], direct["total_counts_n"])
    second = np.concatenate([batch["cell_index_n"].numpy() for batch in epoch(dm, 1)])
    assert not np.array_equal(second, served)


def test_pools_are_read_together_and_workers_serve_every_cell_once(tmp_path) -> None:
    dm = BaseEnhancedDataModule(
        data=shared_data(MOUSE),
        backed=True,
        batch_size=128,
        block_size=32,
        shuffle_buffer=8,
        num_workers=2,
        val_fraction=0.0,
        stats_cache_dir=str(tmp_path),
        progress=False,
        **LOADER_ONLY,
    )
    dm.setup("fit")
    loader = dm.train_dataloader()
    assert loader.sampler.sampler.batches_per_item == 2  # one pool of 256 rows = 2 batches per read
    served = np.concatenate([batch["cell_index_n"].numpy() for batch in loader])
    assert np.array_equal(np.sort(served), np.arange(dm.store.n_obs))
