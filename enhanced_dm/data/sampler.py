"""Block-shuffle batch sampler: contiguous reads, seeded shuffles, disjoint shares per DDP rank."""

from __future__ import annotations

import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np
from torch.utils.data import DistributedSampler

from enhanced_dm.errors import ConfigError

__all__ = ["BatchRequest", "BlockShuffleSampler", "ResumableBatchSampler", "StampedSampler"]

# What a resumed sampler must share with the one that wrote the state, and how to name it.
_IDENTITY_NAMES = {
    "batch_size": "batch_size",
    "num_replicas": "world size (number of DDP processes)",
    "seed": "seed",
    "block_size": "block_size",
    "shuffle_buffer": "shuffle_buffer",
    "shuffle": "shuffle",
    "drop_last": "drop_last",
    "even_batches": "even_batches",
    "n_indices": "number of cells",
    "indices_crc32": "checksum of the cell indices",
}


class BlockShuffleSampler(DistributedSampler):
    """Yields lists of row indices (one list = one batch) for a DataLoader with ``batch_size=None``.

    Shuffling (training): the rows of ``indices`` (kept in storage order) are cut into contiguous
    blocks of ``block_size`` rows; the blocks are shuffled, ``shuffle_buffer`` consecutive blocks
    are pooled and their rows shuffled. ``block_size=1`` is a full random permutation; larger
    blocks trade randomness for contiguous (fast) reads. The epoch's order depends only on
    ``(seed, epoch)``, so every rank computes the same order without communicating.

    Sharding: the epoch's order is cut into ``num_replicas`` consecutive shares, one per rank, and
    each rank cuts its share into batches (so a rank's reads stay block-contiguous).

    * ``even_batches=True`` (training): every share has ``len(indices) // num_replicas`` rows, so
      every rank yields the same number of equally sized batches and DDP collectives never wait
      on a rank that ran out. The drop policy: the last ``len(indices) % num_replicas`` rows of
      the epoch's order (fewer than ``num_replicas`` cells, different ones each epoch) are left
      out; nothing is ever duplicated (no padding).
    * ``even_batches=False`` (fitting, evaluation, predict): the shares differ by at most one row
      and every row is yielded exactly once over all ranks, in storage order when
      ``shuffle=False``. Ranks may then yield one batch more or less than each other.

    DataLoader workers never see this sampler: with ``batch_size=None`` it runs in the main
    process and each batch of indices is handed to one worker, so workers split a rank's share
    without overlap by construction.

    Reading: with ``batches_per_item > 1`` each item is a tuple of that many consecutive batches
    (a shuffle pool's worth), which the dataset reads with one read of their rows and the
    DataLoader hands out one batch at a time; ``len()`` and positions still count batches.

    Resume: ``state_dict()`` records the epoch and ``start_batch``, the number of batches of that
    epoch already handed out; ``load_state_dict`` makes the next iteration skip them. A
    DataLoader with workers asks for batches ahead of the training loop (prefetching), so a
    caller that knows how many batches were really consumed (the DataModule asks the Lightning
    fit loop) should record that number instead. It subclasses ``DistributedSampler`` only so
    Lightning does not wrap it in another one; it does its own sharding.
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
        batches_per_item: int = 1,
    ) -> None:
        if min(batch_size, block_size, shuffle_buffer, batches_per_item) < 1:
            raise ConfigError(
                "batch_size, block_size, shuffle_buffer and batches_per_item must be >= 1, got "
                f"{batch_size}, {block_size}, {shuffle_buffer}, {batches_per_item}"
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
        self.batches_per_item = batches_per_item
        self.epoch = 0
        self.start_batch = 0
        self._position = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch's permutation (Lightning calls this at each epoch start).

        Moving to another epoch forgets a restored mid-epoch position; setting the same epoch
        again (Lightning does so after a resume) keeps it.
        """
        if epoch != self.epoch:
            self.start_batch = 0
            self._position = 0
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

    def _share_bounds(self) -> tuple[int, int]:
        """[begin, end) of this rank's share within the epoch's order."""
        n_rows = len(self.indices)
        if self.even_batches:
            size = n_rows // self.num_replicas
            return self.rank * size, (self.rank + 1) * size
        size, extra = divmod(n_rows, self.num_replicas)
        begin = self.rank * size + min(self.rank, extra)
        return begin, begin + size + (self.rank < extra)

    def _rank_batches(self) -> list[np.ndarray]:
        begin, end = self._share_bounds()
        rows = self._ordered_rows()[begin:end]
        batches = [rows[i : i + self.batch_size] for i in range(0, len(rows), self.batch_size)]
        if self.drop_last and batches and len(batches[-1]) < self.batch_size:
            batches.pop()
        return batches

    def __iter__(self) -> Iterator[list[int] | tuple[np.ndarray, ...]]:
        """One item per ``batches_per_item`` batches: a batch is a sorted list of rows; with
        ``batches_per_item > 1`` an item is a tuple of that many consecutive batches (sorted
        arrays), read together by :class:`~enhanced_dm.data.collate.CellBatchDataset`."""
        batches = self._rank_batches()
        start, self.start_batch = self.start_batch, 0
        self._position = start
        for position in range(start, len(batches), self.batches_per_item):
            group = batches[position : position + self.batches_per_item]
            self._position = position + len(group)
            if self.batches_per_item == 1:
                yield np.sort(group[0]).tolist()
            else:
                yield tuple(np.sort(batch) for batch in group)

    def __len__(self) -> int:
        """Batches this rank yields in a whole epoch (a resumed epoch yields fewer)."""
        begin, end = self._share_bounds()
        n_batches, remainder = divmod(end - begin, self.batch_size)
        return n_batches + (1 if remainder and not self.drop_last else 0)

    def _identity(self) -> dict[str, Any]:
        return {
            "batch_size": self.batch_size,
            "num_replicas": self.num_replicas,
            "seed": self.seed,
            "block_size": self.block_size,
            "shuffle_buffer": self.shuffle_buffer,
            "shuffle": self.shuffle,
            "drop_last": self.drop_last,
            "even_batches": self.even_batches,
            "n_indices": len(self.indices),
            "indices_crc32": zlib.crc32(self.indices.tobytes()),
        }

    def state_dict(self) -> dict[str, Any]:
        """Epoch, batches of it handed out so far (``start_batch``) and the configuration."""
        return {"epoch": self.epoch, "start_batch": self._position, **self._identity()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume at the saved position; refuses a state from an incompatible configuration.

        Raises :class:`~enhanced_dm.errors.ConfigError` naming the first setting that differs
        (batch size, world size, seed, shuffle settings or the cells themselves), because any of
        them changes which batches the resumed run would see.
        """
        for key, value in self._identity().items():
            if key in state and state[key] != value:
                raise ConfigError(
                    f"cannot resume: the checkpoint was written with {_IDENTITY_NAMES[key]} = "
                    f"{state[key]}, this run has {value}; resuming would change the order of the "
                    "data. Use the checkpoint's setting, or start a new run from its weights "
                    "(e.g. LightningModule.load_from_checkpoint) instead of resuming"
                )
        start_batch = int(state["start_batch"])
        if start_batch < 0:
            raise ConfigError(f"cannot resume: start_batch must be >= 0, got {start_batch}")
        self.epoch = int(state["epoch"])
        self.start_batch = start_batch
        self._position = start_batch


@runtime_checkable
class ResumableBatchSampler(Protocol):
    """What a DataModule needs of a batch sampler (:class:`BlockShuffleSampler`, or a
    component's own, e.g. one that yields sequences).

    Iterating yields items: a list of rows (one batch), a tuple of row arrays (batches read
    together) or an ``(n, s)`` int64 array of rows with -1 padding (a batch of sequences,
    :mod:`enhanced_dm.data.sequences`). ``len()`` counts batches; ``epoch`` is the epoch the next
    iteration draws, ``start_batch`` the batches of it that iteration skips (a resume).
    A sampler whose items hold several cells may say how many (``cells_per_item``): the
    fitting passes then read ``batch_size * cells_per_item`` cells per batch.
    Subclass :class:`torch.utils.data.DistributedSampler` (without calling its constructor) so
    Lightning does not wrap the sampler in another one under DDP.
    """

    epoch: int
    start_batch: int

    def set_epoch(self, epoch: int) -> None: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...

    def __iter__(self) -> Iterator[Any]: ...

    def __len__(self) -> int: ...


@dataclass(frozen=True)
class BatchRequest:
    """An item of a sampler, with the epoch and the index (within the epoch, on this rank) of its
    first batch: the dataset stamps both into the batches it reads, so each batch's
    :class:`~enhanced_dm.transforms.context.StepContext` is the same with any number of workers
    and after a resume."""

    rows: Any
    epoch: int
    batch_index: int


class StampedSampler(DistributedSampler):
    """Wraps a :class:`ResumableBatchSampler` and yields its items as :class:`BatchRequest`.

    ``set_epoch`` (called by Lightning) and ``len()`` go to the wrapped sampler.
    """

    def __init__(self, sampler: ResumableBatchSampler) -> None:
        self.sampler = sampler

    def set_epoch(self, epoch: int) -> None:
        self.sampler.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.sampler)

    def __iter__(self) -> Iterator[BatchRequest]:
        epoch, index = self.sampler.epoch, self.sampler.start_batch
        for item in self.sampler:
            yield BatchRequest(item, epoch, index)
            index += len(item) if isinstance(item, tuple) else 1
