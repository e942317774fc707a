"""BlockShuffleSampler across DDP ranks and DataLoader workers, and its resume state.

Ranks are simulated by building one sampler per rank (the order depends only on seed and epoch,
so this is what N processes compute); ``tests/test_ddp.py`` checks the same under real gloo ranks.
"""

from __future__ import annotations

import numpy as np
import pytest

from enhanced_dm import ConfigError
from enhanced_dm.data import BlockShuffleSampler, CellStore, make_dataloader
from tests.helpers import shared_data


def rank_samplers(indices: np.ndarray, world_size: int, **options: object) -> list:
    return [
        BlockShuffleSampler(indices, 32, num_replicas=world_size, rank=rank, **options)
        for rank in range(world_size)
    ]


def epoch_cells(sampler: BlockShuffleSampler, epoch: int = 0) -> list[int]:
    sampler.set_epoch(epoch)
    return [cell for batch in sampler for cell in batch]


@pytest.mark.parametrize("world_size", [1, 2, 3, 4])
@pytest.mark.parametrize("n_cells", [1000, 1001, 1003, 64, 7])
def test_training_shares_are_disjoint_equal_and_drop_fewer_than_world_size(
    world_size: int, n_cells: int
) -> None:
    indices = np.arange(10, 10 + n_cells)
    samplers = rank_samplers(indices, world_size, block_size=16, seed=2)
    for epoch in range(3):
        per_rank = [epoch_cells(sampler, epoch) for sampler in samplers]
        counts = {len(list(sampler)) for sampler in samplers}
        assert counts == {len(samplers[0])}  # same number of batches on every rank
        seen = [cell for cells in per_rank for cell in cells]
        assert len(seen) == len(set(seen))  # no cell twice
        assert set(seen) <= set(indices.tolist())
        assert len(indices) - len(seen) == n_cells % world_size  # the documented drop


def test_dropped_cells_change_with_the_epoch() -> None:
    indices = np.arange(1001)
    samplers = rank_samplers(indices, 2, block_size=1, seed=0)
    dropped = [
        set(indices.tolist()) - set(epoch_cells(samplers[0], e) + epoch_cells(samplers[1], e))
        for e in range(4)
    ]
    assert all(len(cells) == 1 for cells in dropped)
    assert len(set().union(*dropped)) > 1


@pytest.mark.parametrize("world_size", [2, 3, 5])
@pytest.mark.parametrize("shuffle", [False, True])
def test_uneven_shares_cover_every_cell_exactly_once(world_size: int, shuffle: bool) -> None:
    """Fitting, evaluation and predict: no padding, no drop."""
    indices = np.arange(3, 1004)
    samplers = rank_samplers(indices, world_size, shuffle=shuffle, even_batches=False)
    per_rank = [epoch_cells(sampler) for sampler in samplers]
    assert sorted(cell for cells in per_rank for cell in cells) == indices.tolist()
    assert [len(list(s)) for s in samplers] == [len(s) for s in samplers]
    if not shuffle:  # storage order, rank 0 first: concatenated predictions are in cell order
        assert [cell for cells in per_rank for cell in cells] == indices.tolist()


def test_one_rank_order_is_unchanged_by_the_sharding_code() -> None:
    """World size 1 yields the whole epoch order, cut into batches."""
    (sampler,) = rank_samplers(np.arange(500), 1, block_size=8, seed=7)
    assert sorted(epoch_cells(sampler)) == list(range(500))


@pytest.mark.parametrize("stop_after", [0, 1, 5, 10])
def test_state_dict_resumes_with_the_remaining_batches(stop_after: int) -> None:
    indices = np.arange(1000)
    sampler = BlockShuffleSampler(indices, 32, seed=1, num_replicas=2, rank=1)
    sampler.set_epoch(3)
    whole = list(sampler)
    sampler = BlockShuffleSampler(indices, 32, seed=1, num_replicas=2, rank=1)
    sampler.set_epoch(3)
    iterator = iter(sampler)
    for _ in range(stop_after):
        next(iterator)
    state = sampler.state_dict()
    assert (state["epoch"], state["start_batch"]) == (3, stop_after)
    resumed = BlockShuffleSampler(indices, 32, seed=1, num_replicas=2, rank=1)
    resumed.load_state_dict(state)
    resumed.set_epoch(3)  # Lightning sets the same epoch again: the position is kept
    assert list(resumed) == whole[stop_after:]
    assert list(resumed) == whole  # the next pass over the epoch is whole again
    resumed.load_state_dict(state)
    resumed.set_epoch(4)  # another epoch: the saved position no longer applies
    assert len(list(resumed)) == len(whole)


@pytest.mark.parametrize(
    ("change", "name"),
    [
        ({"batch_size": 16}, "batch_size"),
        ({"num_replicas": 4}, r"world size \(number of DDP processes\)"),
        ({"seed": 2}, "seed"),
        ({"block_size": 8}, "block_size"),
        ({"shuffle_buffer": 2}, "shuffle_buffer"),
        ({"indices": np.arange(1, 1001)}, "checksum of the cell indices"),
    ],
)
def test_incompatible_state_is_refused_with_the_setting_named(change: dict, name: str) -> None:
    options: dict = dict(indices=np.arange(1000), batch_size=32, seed=1, num_replicas=2, rank=0)
    state = BlockShuffleSampler(**options).state_dict()
    other = BlockShuffleSampler(**{**options, **change})
    with pytest.raises(
        ConfigError, match=rf"cannot resume: the checkpoint was written with {name}"
    ):
        other.load_state_dict(state)


def test_dataloader_workers_split_a_share_without_overlap() -> None:
    """With ``batch_size=None`` the sampler runs in the main process and each batch goes to one
    worker: two workers yield exactly the batches of none, in order, each cell once."""
    store = CellStore(shared_data("singlecell/wu2020_tcells_counts.h5ad"))
    sampler = BlockShuffleSampler(np.arange(store.n_obs), 32, block_size=8, num_replicas=2, rank=1)
    sampler.set_epoch(1)
    expected = list(sampler)
    loader = make_dataloader(store, sampler, num_workers=2)
    got = [batch["cell_index_n"].tolist() for batch in loader]
    assert got == expected
    cells = [cell for batch in got for cell in batch]
    assert len(cells) == len(set(cells))
