"""Map-style dataset whose item is a whole CSR batch, and the DataLoader that serves it."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from enhanced_dm.data.sampler import BatchRequest, ResumableBatchSampler, StampedSampler
from enhanced_dm.data.sequences import SequenceRows, read_sequences
from enhanced_dm.data.store import CellStore

__all__ = ["CellBatchDataset", "CellDataLoader", "CellDataset", "collate_cells", "make_dataloader"]


class CellBatchDataset(Dataset):
    """``dataset[rows]`` reads the rows as one CSR batch (scvi-tools' batch-sampler pattern);
    ``dataset[(rows_a, rows_b, ...)]`` (a tuple of batches) reads them together and returns the
    list of batches (:meth:`CellStore.read_batches`); ``dataset[rows_ns]`` (a 2-D array, -1 for
    padding) reads a batch of sequences (:func:`~enhanced_dm.data.sequences.read_sequences`).
    A :class:`~enhanced_dm.data.sampler.BatchRequest` is read the same way, and its epoch and
    batch index are stamped into each batch as the plain ints ``"epoch"`` and ``"batch_index"``
    (the DataModule turns them into the step context; the model never sees them).

    One ``__getitem__`` per batch or pool keeps Python overhead per cell near zero and lets the
    store read contiguous spans.
    """

    def __init__(self, store: CellStore) -> None:
        self.store = store

    def __len__(self) -> int:
        return self.store.n_obs

    def __getitem__(self, item: Any) -> dict[str, Any] | list[dict[str, Any]]:
        request = item if isinstance(item, BatchRequest) else None
        rows = request.rows if request is not None else item
        if isinstance(rows, tuple):
            batches: list[dict[str, Any]] = list(self.store.read_batches(rows))
        elif isinstance(rows, np.ndarray) and rows.ndim == 2:
            batches = [read_sequences(self.store, rows)]
        else:
            batches = [self.store.read(rows)]
        if request is not None:
            for offset, batch in enumerate(batches):
                batch["epoch"] = request.epoch
                batch["batch_index"] = request.batch_index + offset
        return batches if isinstance(rows, tuple) else batches[0]


class CellDataLoader(DataLoader):
    """A DataLoader that yields one batch at a time (items read as a group of batches are
    handed out one by one) and whose resume position lives in the DataModule's ``state_dict``.

    ``len()`` counts batches (the sampler's length). Lightning saves the state of dataloaders that have ``state_dict``/``load_state_dict`` and warns
    that others cannot resume mid-epoch; here the sampler position is derived from the fit loop's
    progress and saved by the DataModule, so the loader itself has nothing to add.
    """

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:  # type: ignore[override]
        # A generator over torch's iterator: Lightning only iterates it.
        for item in super().__iter__():
            if isinstance(item, list):
                yield from item
            else:
                yield item

    def state_dict(self) -> dict[str, object]:
        return {}

    def load_state_dict(self, state_dict: dict[str, object]) -> None:
        """Nothing to restore: see the class docstring."""


def make_dataloader(
    store: CellStore,
    sampler: ResumableBatchSampler,
    num_workers: int = 0,
    pin_memory: bool = False,
    persistent_workers: bool = True,
) -> DataLoader:
    """DataLoader over whole-batch items: ``batch_size=None`` so no per-cell collation happens.
    Items are stamped with their epoch and batch index (:class:`StampedSampler`).

    Workers persist across epochs unless ``persistent_workers=False`` (a one-off pass such as
    fitting: its workers then exit when the pass ends instead of whenever the loader is
    garbage-collected, possibly while the next loader forks its own)."""
    return CellDataLoader(
        CellBatchDataset(store),
        sampler=StampedSampler(sampler),
        batch_size=None,
        num_workers=num_workers,
        pin_memory=pin_memory,
        persistent_workers=persistent_workers and num_workers > 0,
    )


class CellDataset(Dataset):
    """Per-cell items (a one-row CSR batch each) for plain ``DataLoader(..., collate_fn=loader)``
    use with the seed-compatible loaders; slower than :class:`CellBatchDataset` by design.

    Indexed by an array (one sequence of a sequence batch sampler: positions, -1 for padding),
    the item is that sequence's rows (:class:`~enhanced_dm.data.sequences.SequenceRows`), which
    the loader reads as a batch of sequences.
    """

    def __init__(self, store: CellStore, indices: Sequence[int] | None = None) -> None:
        self.store = store
        self.indices = list(range(store.n_obs)) if indices is None else list(indices)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, position: int | np.ndarray) -> dict[str, torch.Tensor] | SequenceRows:
        if isinstance(position, np.ndarray):
            rows = np.asarray(self.indices, dtype=np.int64)[np.maximum(position, 0)]
            return SequenceRows(np.where(position >= 0, rows, -1))
        return self.store.read([self.indices[position]])


def collate_cells(items: Sequence[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Stack one-or-more-row batch dicts into one batch; ``counts_ng`` stays sparse CSR."""
    if not items:
        raise ValueError("cannot collate an empty list of cells")
    batch: dict[str, torch.Tensor] = {}
    for key in items[0]:
        parts = [item[key] for item in items]
        if parts[0].layout == torch.sparse_csr:
            batch[key] = _stack_csr(parts)
        else:
            batch[key] = torch.cat(
                [part.reshape(-1) if part.dim() <= 1 else part for part in parts]
            )
    return batch


def _stack_csr(parts: Sequence[torch.Tensor]) -> torch.Tensor:
    crow, col, values, offset = [parts[0].crow_indices()[:1]], [], [], 0
    for part in parts:
        part_crow = part.crow_indices()
        crow.append(part_crow[1:] + offset)
        offset += int(part_crow[-1])
        col.append(part.col_indices())
        values.append(part.values())
    n_rows = sum(part.shape[0] for part in parts)
    return torch.sparse_csr_tensor(
        torch.cat(crow),
        torch.cat(col),
        torch.cat(values),
        size=(n_rows, parts[0].shape[1]),
        check_invariants=False,
    )
