"""Batches of time-ordered sequences of cells, drawn within trajectory groups.

scRNA-seq destroys the cell it measures, so a sequence is a sample of different cells across
time (as optimal-transport and trajectory models use them), not one cell followed in time.
"""

from __future__ import annotations

import itertools
import zlib
from collections.abc import Iterator
from typing import Any, Literal

import numpy as np
from torch.utils.data import DistributedSampler

from enhanced_dm.errors import ConfigError

__all__ = ["SamplingStrategy", "TimeSequenceSampler", "draw_sequences"]

SamplingStrategy = Literal["uniform", "proportional", "window"]


def _quotas(available: np.ndarray, length: int, weights: np.ndarray) -> np.ndarray:
    """Cells to take from each step: ``length`` split by ``weights`` (largest remainder), never
    more than a step has; what a step cannot give goes to the others."""
    take = np.zeros_like(available)
    room = length
    while room > 0 and (available > take).any():
        open_ = available > take
        share = np.where(open_, weights, 0.0)
        if share.sum() <= 0:
            share = open_.astype(np.float64)
        exact = room * share / share.sum()
        extra = np.floor(exact).astype(np.int64)
        remainder = room - int(extra.sum())
        if remainder:
            order = np.lexsort((np.arange(len(exact)), -(exact - extra)))
            extra[order[:remainder]] += 1
        extra = np.minimum(extra, available - take)
        if extra.sum() == 0:
            extra[np.flatnonzero(open_)[0]] = 1
        take += extra
        room -= int(extra.sum())
    return take


def draw_sequences(
    cells: np.ndarray,
    time: np.ndarray,
    step: np.ndarray,
    group: np.ndarray,
    *,
    length: int,
    strategy: SamplingStrategy,
    step_weights: np.ndarray,
    rng: np.random.Generator,
) -> list[np.ndarray]:
    """Split ``cells`` (global rows) into time-ordered sequences of at most ``length`` cells,
    each cell in exactly one sequence, no sequence mixing two ``group`` values.

    ``time`` / ``step`` / ``group`` are indexed by global row. Within a group the cells of each
    step are shuffled (``rng``), then sequences are filled: ``"uniform"`` takes as many cells
    from every step as the length allows, ``"proportional"`` splits the length by
    ``step_weights`` (the train cells per step), ``"window"`` cuts the time-sorted cells into
    consecutive windows from a random offset. Each sequence is sorted by time, ties in the
    shuffled order; the sequences come back in random order.
    """
    sequences: list[np.ndarray] = []
    n_steps = len(step_weights)
    for value in np.unique(group[cells]):
        members = rng.permutation(cells[group[cells] == value])
        if strategy == "window":
            ordered = members[np.argsort(time[members], kind="stable")]
            offset = int(rng.integers(length)) if len(ordered) > length else 0
            bounds = [0, *range(offset or length, len(ordered), length), len(ordered)]
            sequences += [ordered[a:b] for a, b in itertools.pairwise(bounds) if b > a]
            continue
        queues = [members[step[members] == s] for s in range(n_steps)]
        used = np.zeros(n_steps, dtype=np.int64)
        sizes = np.array([len(q) for q in queues], dtype=np.int64)
        weights = np.ones(n_steps) if strategy == "uniform" else step_weights.astype(np.float64)
        while (used < sizes).any():
            take = _quotas(sizes - used, length, weights)
            parts = [queues[s][used[s] : used[s] + take[s]] for s in range(n_steps)]
            used += take
            sequence = np.concatenate(parts)
            sequences.append(sequence[np.argsort(time[sequence], kind="stable")])
    order = rng.permutation(len(sequences))
    return [sequences[i] for i in order]


class TimeSequenceSampler(DistributedSampler):
    """Yields batches of time-ordered sequences: ``(batch_size, length)`` int64 rows, -1 padding.

    Training (``shuffle``): the epoch's sequences depend on ``(seed, epoch)`` only, every train
    cell is in one sequence, ranks take disjoint equal shares (the few sequences that do not
    divide evenly are left out of the epoch), and :meth:`state_dict` resumes mid-epoch exactly.
    Otherwise the sequences are the same every time (drawn with ``seed``) and every cell is in
    one of them on some rank. Subclasses ``DistributedSampler`` only so Lightning does not wrap
    it (its constructor is not called).
    """

    def __init__(
        self,
        indices: np.ndarray,
        time: np.ndarray,
        step: np.ndarray,
        group: np.ndarray,
        *,
        length: int,
        strategy: SamplingStrategy,
        step_weights: np.ndarray,
        batch_size: int,
        shuffle: bool,
        seed: int,
        rank: int,
        world_size: int,
    ) -> None:
        if length < 1 or batch_size < 1:
            raise ConfigError("sequence length and batch size must be >= 1")
        self.indices = np.asarray(indices, dtype=np.int64)
        self.time, self.step, self.group = time, step, group
        self.length = int(length)
        self.strategy = strategy
        self.step_weights = np.asarray(step_weights, dtype=np.float64)
        self.batch_size = int(batch_size)
        self.shuffle = shuffle
        self.seed = int(seed)
        self.rank, self.world_size = int(rank), int(world_size)
        self.epoch = 0
        self.start_batch = 0
        self._position = 0
        self._cache: tuple[int, list[np.ndarray]] | None = None

    @property
    def cells_per_item(self) -> int:
        """Cells an item holds at most (the fitting passes read that many per batch item)."""
        return self.length

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch (Lightning calls this each epoch); a restored position is kept
        when the same epoch is set again."""
        if epoch != self.epoch:
            self.start_batch = 0
            self._position = 0
        self.epoch = epoch

    def _sequences(self) -> list[np.ndarray]:
        """This rank's sequences of the current epoch."""
        epoch = self.epoch if self.shuffle else 0
        if self._cache is not None and self._cache[0] == epoch:
            return self._cache[1]
        rng = np.random.default_rng([self.seed, epoch, 0x7E4])
        drawn = draw_sequences(
            self.indices,
            self.time,
            self.step,
            self.group,
            length=self.length,
            strategy=self.strategy,
            step_weights=self.step_weights,
            rng=rng,
        )
        if self.shuffle:
            per_rank = len(drawn) // self.world_size
            mine = drawn[self.rank * per_rank : (self.rank + 1) * per_rank]
        else:
            mine = drawn[self.rank :: self.world_size]
        self._cache = (epoch, mine)
        return mine

    def __len__(self) -> int:
        return -(-len(self._sequences()) // self.batch_size)

    def __iter__(self) -> Iterator[np.ndarray]:
        sequences = self._sequences()
        start, self.start_batch = self.start_batch, 0
        self._position = start
        for position in range(start, len(self), 1):
            chunk = sequences[position * self.batch_size : (position + 1) * self.batch_size]
            rows = np.full((len(chunk), self.length), -1, dtype=np.int64)
            for i, sequence in enumerate(chunk):
                rows[i, : len(sequence)] = sequence
            self._position = position + 1
            yield rows

    def _identity(self) -> dict[str, Any]:
        return {
            "batch_size": self.batch_size,
            "num_replicas": self.world_size,
            "seed": self.seed,
            "sequence_length": self.length,
            "strategy": self.strategy,
            "shuffle": self.shuffle,
            "n_indices": len(self.indices),
            "indices_crc32": zlib.crc32(self.indices.tobytes()),
        }

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "start_batch": self._position, **self._identity()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume at the saved position; a state from another configuration is refused."""
        for key, value in self._identity().items():
            if key in state and state[key] != value:
                raise ConfigError(
                    f"cannot resume: the checkpoint's sequence sampler has {key} = {state[key]}, "
                    f"this run has {value}; resuming would change the sequences"
                )
        self.epoch = int(state["epoch"])
        self.start_batch = self._position = int(state["start_batch"])
