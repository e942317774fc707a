"""BlockShuffleSampler: every cell once per epoch, seeded, block-contiguous."""

from __future__ import annotations

import numpy as np
import pytest

from enhanced_dm.data import BlockShuffleSampler


@pytest.mark.parametrize("block_size", [1, 16, 64, 256])
@pytest.mark.parametrize("shuffle", [True, False])
def test_every_cell_exactly_once_per_epoch(block_size: int, shuffle: bool) -> None:
    indices = np.arange(5, 1005)
    sampler = BlockShuffleSampler(indices, 64, block_size=block_size, shuffle=shuffle, seed=3)
    seen = np.concatenate([np.asarray(batch) for batch in sampler])
    assert len(seen) == len(indices)
    assert sorted(seen.tolist()) == indices.tolist()
    assert len(list(sampler)) == len(sampler)


def test_order_is_seeded_and_changes_with_the_epoch() -> None:
    def epoch_order(seed: int, epoch: int) -> list[list[int]]:
        sampler = BlockShuffleSampler(np.arange(2000), 100, block_size=16, seed=seed)
        sampler.set_epoch(epoch)
        return list(sampler)

    assert epoch_order(0, 0) == epoch_order(0, 0)
    assert epoch_order(0, 0) != epoch_order(0, 1)
    assert epoch_order(0, 0) != epoch_order(1, 0)


def test_blocks_stay_contiguous_and_block_size_one_is_fully_random() -> None:
    contiguous = BlockShuffleSampler(np.arange(4096), 256, block_size=64, shuffle_buffer=1)
    for batch in contiguous:
        runs = np.diff(batch) != 1
        assert runs.sum() <= 256 // 64  # at most one jump per 64-row block
    random = BlockShuffleSampler(np.arange(4096), 256, block_size=1, seed=0)
    first = np.asarray(next(iter(random)))
    assert (np.diff(first) == 1).mean() < 0.2


def test_unshuffled_order_is_storage_order() -> None:
    sampler = BlockShuffleSampler(np.array([9, 3, 7, 1]), 3, shuffle=False)
    assert list(sampler) == [[1, 3, 7], [9]]
