"""Which batch sampler a DataModule's loaders use: a component's own, else block-shuffle."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from enhanced_dm.components.base import ComponentSet
from enhanced_dm.data.sampler import BlockShuffleSampler, ResumableBatchSampler
from enhanced_dm.errors import ConfigError

__all__ = ["MAX_BATCHES_PER_ITEM", "batches_per_pool", "fitting_sampler", "make_batch_sampler"]

MAX_BATCHES_PER_ITEM = 16


def batches_per_pool(options: Mapping[str, Any]) -> int:
    """Batches cut from one shuffle pool (``block_size * shuffle_buffer`` rows), read together
    so each block is read once (at most 16, so a DataLoader item stays a few tens of MB)."""
    pool_rows = options["block_size"] * options["shuffle_buffer"]
    return min(MAX_BATCHES_PER_ITEM, max(1, -(-pool_rows // options["batch_size"])))


def make_batch_sampler(
    options: Mapping[str, Any],
    components: ComponentSet,
    indices: np.ndarray,
    *,
    shuffle: bool,
    pooled: bool,
    rank: int,
    world_size: int,
) -> ResumableBatchSampler:
    """The batch sampler of the component that replaces it, else the block-shuffle sampler.

    Training (``shuffle``): equal batch counts per rank, and (``pooled``) the batches of a
    shuffle pool read as one item. Otherwise every cell once.
    """
    owned = components.batch_sampler(
        indices,
        shuffle=shuffle,
        seed=options["seed"],
        rank=rank,
        world_size=world_size,
        batch_size=options["batch_size"],
    )
    if owned is not None:
        if not options["dense_counts"]:
            raise ConfigError(
                "a component makes items of several cells, which need the dense counts; "
                "leave dense_counts=True"
            )
        return owned
    return BlockShuffleSampler(
        indices,
        options["batch_size"],
        block_size=options["block_size"],
        shuffle_buffer=options["shuffle_buffer"],
        shuffle=shuffle,
        seed=options["seed"],
        num_replicas=world_size,
        rank=rank,
        even_batches=shuffle,
        batches_per_item=batches_per_pool(options) if shuffle and pooled else 1,
    )


def fitting_sampler(
    options: Mapping[str, Any],
    train_indices: np.ndarray,
    rank: int,
    world_size: int,
    cells_per_item: int = 1,
) -> BlockShuffleSampler:
    """This rank's disjoint share of the train cells, in order, each cell once (cells, also
    when a component's sampler makes items of several cells: then a fitting batch holds
    ``batch_size * cells_per_item`` cells, as many as a training batch)."""
    return BlockShuffleSampler(
        train_indices,
        options["batch_size"] * cells_per_item,
        block_size=options["block_size"],
        shuffle=False,
        num_replicas=world_size,
        rank=rank,
        even_batches=False,
    )
