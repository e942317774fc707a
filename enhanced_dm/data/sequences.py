"""Batches of sequences: read the real cells of an (n, s) layout once, reshape after the pipeline.

A batch sampler that yields items of sequences (e.g. cells ordered in time) yields an ``(n, s)``
int64 array of global rows, ``-1`` marking padding. The rows are read as one CSR batch of the
distinct real cells (ascending), which the pipeline normalizes like any batch: padding never
meets a normalization or the NaN guard. :func:`to_sequences` then gathers every per-cell key
into the sequence layout: ``x_ng`` becomes ``x_nsg``, ``cell_index_n`` becomes
``cell_index_ns`` (any key whose axes start with ``n`` gets ``s`` after it), and ``mask_ns``
marks the real positions. ``batch_size`` counts sequences.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch

from enhanced_dm.data.store import CellStore
from enhanced_dm.errors import ConfigError

__all__ = ["SEQUENCE_ROW_KEY", "SequenceRows", "read_sequences", "to_sequences"]

SEQUENCE_ROW_KEY = "sequence_row_ns"
"""Batch key of the layout: for each (sequence, position) the row of the flat batch, or -1."""


@dataclass(frozen=True)
class SequenceRows:
    """One sequence's global rows (-1 for padding), as a per-cell dataset returns it when a
    sequence batch sampler indexes it; a collate function stacks them for
    :func:`read_sequences`."""

    rows_s: np.ndarray


def read_sequences(store: CellStore, rows_ns: np.ndarray) -> dict[str, torch.Tensor]:
    """The distinct real rows of ``rows_ns`` as one CSR batch, plus the layout key."""
    rows_ns = np.asarray(rows_ns, dtype=np.int64)
    if rows_ns.ndim != 2:
        raise ValueError(f"a batch of sequences is a 2-D array of rows, got shape {rows_ns.shape}")
    real = rows_ns >= 0
    distinct = np.unique(rows_ns[real])
    batch = store.read(distinct)
    layout = np.full(rows_ns.shape, -1, dtype=np.int64)
    layout[real] = np.searchsorted(distinct, rows_ns[real])
    batch[SEQUENCE_ROW_KEY] = torch.from_numpy(layout)
    return batch


def _sequence_key(key: str) -> str | None:
    """``x_ng`` -> ``x_nsg``, ``cell_index_n`` -> ``cell_index_ns``; None for other keys."""
    name, _, axes = key.rpartition("_")
    if not name or not axes.startswith("n") or "s" in axes:
        return None
    return f"{name}_ns{axes[1:]}"


def to_sequences(batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Gather the per-cell keys of a normalized flat batch into its sequence layout.

    Padded positions hold 0 (floating and bool keys) or -1 (integer keys: an index or code that
    names nothing). Keys that are not per cell (no ``n`` axis first) pass unchanged.
    """
    layout_ns = batch[SEQUENCE_ROW_KEY]
    n_rows = batch["cell_index_n"].shape[0]
    mask_ns = layout_ns >= 0
    padded_ns = ~mask_ns
    has_padding = bool(padded_ns.any())
    rows_ns = layout_ns.clamp(min=0)
    rows_flat = rows_ns.reshape(-1)
    out: dict[str, torch.Tensor] = {}
    for key, value in batch.items():
        if key == SEQUENCE_ROW_KEY:
            continue
        new_key = _sequence_key(key)
        if new_key is None or not torch.is_tensor(value) or value.dim() == 0:
            out[key] = value
            continue
        if value.shape[0] != n_rows:
            raise ConfigError(f"batch key {key!r} has {value.shape[0]} rows, the batch {n_rows}")
        if value.layout != torch.strided:
            raise ConfigError(
                f"batch key {key!r} is sparse; sequences need dense per-cell tensors "
                "(leave dense_counts=True)"
            )
        # a new tensor (index_select: the fastest gather on CPU), its padding overwritten in place
        gathered = value.index_select(0, rows_flat).reshape(*rows_ns.shape, *value.shape[1:])
        if has_padding:
            padding = -1 if not (value.is_floating_point() or value.dtype == torch.bool) else 0
            gathered[padded_ns] = padding
        out[new_key] = gathered
    out["mask_ns"] = mask_ns
    return out
