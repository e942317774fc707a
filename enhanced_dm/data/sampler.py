"""Block-shuffle batch sampler: contiguous reads, seeded shuffles, disjoint shares per DDP rank."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
from torch.utils.data import DistributedSampler

from enhanced_dm.errors import ConfigError

__all__ = ["BlockShuffleSampler"]


class BlockShuffleSampler(DistributedSampler):
    """Yields lists of row indices (one list = one batch) for a DataLoader with ``batch_size=None``.

    Shuffling (training): the rows of ``indices`` (kept in storage order) are cut into contiguous
    blocks of ``block_size`` rows; the blocks are shuffled, ``shuffle_buffer`` consecutive blocks
    are pooled and their rows shuffled, and each pool is cut into batches. ``block_size=1`` is a
    full random permutation; larger blocks trade randomness for contiguous (fast) reads. The order
    depends only on ``(seed, epoch)``.

    Sharding: batches are dealt round-robin to ``num_replicas`` ranks. With ``even_batches=True``
    (training) every rank gets the same number of batches: the last incomplete round is dropped
    (at most ``num_replicas - 1`` batches per epoch, different ones each epoch). With
    ``even_batches=False`` (fitting, evaluation, predict) every row is yielded exactly once over
    all ranks, without padding.

    It subclasses ``DistributedSampler`` only so Lightning does not wrap it in another one; it
    does its own sharding. ``state_dict`` records epoch and position for exact mid-epoch resume.
    """

    def __init__(
        self,
        indices: Sequence[int] | np.ndarray,
        batch_size: int,
        *,
        block_size: int = 64,
        shuffle_buffer: int = 16,
        shuffle: bool = True,
        drop_last: bool = False,
        seed: int = 0,
        num_replicas: int = 1,
        rank: int = 0,
        even_batches: bool = True,
    ) -> None:
        if batch_size < 1 or block_size < 1 or shuffle_buffer < 1:
            raise ConfigError(
                f"batch_size, block_size and shuffle_buffer must be >= 1, got {batch_size}, "
                f"{block_size}, {shuffle_buffer}"
            )
        if not 0 <= rank < num_replicas:
            raise ConfigError(f"rank {rank} is outside [0, {num_replicas})")
        self.indices = np.sort(np.asarray(indices, dtype=np.int64))
        self.batch_size = batch_size
        self.block_size = block_size
        self.shuffle_buffer = shuffle_buffer
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.seed = seed
        self.num_replicas = num_replicas
        self.rank = rank
        self.even_batches = even_batches
        self.epoch = 0
        self.start_batch = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch's permutation (Lightning calls this at each epoch start)."""
        if epoch != self.epoch:
            self.start_batch = 0
        self.epoch = epoch

    def _ordered_rows(self) -> np.ndarray:
        if not self.shuffle:
            return self.indices
        rng = np.random.default_rng([self.seed, self.epoch])
        n_blocks = -(-len(self.indices) // self.block_size)
        block_order = rng.permutation(n_blocks)
        starts = block_order * self.block_size
        lengths = np.minimum(starts + self.block_size, len(self.indices)) - starts
        offsets = np.concatenate([[0], np.cumsum(lengths)])
        positions = np.repeat(starts - offsets[:-1], lengths) + np.arange(offsets[-1])
        rows = self.indices[positions]
        pool = self.block_size * self.shuffle_buffer
        for begin in range(0, len(rows), pool):
            rng.shuffle(rows[begin : begin + pool])
        return rows

    def _all_batches(self) -> list[np.ndarray]:
        rows = self._ordered_rows()
        batches = [rows[i : i + self.batch_size] for i in range(0, len(rows), self.batch_size)]
        if self.drop_last and batches and len(batches[-1]) < self.batch_size:
            batches.pop()
        return batches

    def _rank_batches(self) -> list[np.ndarray]:
        batches = self._all_batches()
        if self.even_batches:
            usable = (len(batches) // self.num_replicas) * self.num_replicas
            batches = batches[:usable]
        return batches[self.rank :: self.num_replicas]

    def __iter__(self) -> Iterator[list[int]]:
        batches = self._rank_batches()
        start = self.start_batch
        for position in range(start, len(batches)):
            self.start_batch = position + 1
            yield np.sort(batches[position]).tolist()
        self.start_batch = 0

    def __len__(self) -> int:
        n_batches = len(self.indices) // self.batch_size
        if not self.drop_last and len(self.indices) % self.batch_size:
            n_batches += 1
        if self.even_batches:
            return n_batches // self.num_replicas
        return len(range(self.rank, n_batches, self.num_replicas))

    def _identity(self) -> dict[str, int]:
        return {
            "seed": self.seed,
            "batch_size": self.batch_size,
            "num_replicas": self.num_replicas,
            "n_indices": len(self.indices),
        }

    def state_dict(self) -> dict[str, Any]:
        """Epoch and number of batches already yielded in it (for mid-epoch resume)."""
        return {"epoch": self.epoch, "start_batch": self.start_batch, **self._identity()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume at the saved position; refuses a state from an incompatible configuration."""
        for key, value in self._identity().items():
            if state.get(key) != value:
                raise ConfigError(
                    f"cannot resume: the checkpoint's sampler has {key}={state.get(key)}, this "
                    f"run has {value}; the data order would change"
                )
        self.epoch = state["epoch"]
        self.start_batch = state["start_batch"]
