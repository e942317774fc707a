"""Small helpers on torch sparse CSR tensors, shared by transforms, fitting and monitors."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch

__all__ = [
    "flat_positions_of_stored_values",
    "flat_positions_shared",
    "repeat_per_stored_value",
    "rows_of_stored_values",
]


def repeat_per_stored_value(x_ng: torch.Tensor, per_row_n: torch.Tensor) -> torch.Tensor:
    """``per_row_n[row]`` for every stored value of a CSR matrix, in storage order (one pass,
    no index gather; no host sync: the size is known).

    On CPU numpy's ``repeat`` does it (4-8x faster than ``torch.repeat_interleave`` there, which
    is the kernel used on other devices and whenever autograd tracks ``per_row_n``).
    """
    crow = x_ng.crow_indices()
    if per_row_n.device.type == "cpu" and not per_row_n.requires_grad:
        lengths = np.diff(crow.numpy())
        return torch.from_numpy(np.repeat(per_row_n.numpy(), lengths))
    return torch.repeat_interleave(per_row_n, crow.diff(), output_size=x_ng.values().numel())


def rows_of_stored_values(x_ng: torch.Tensor) -> torch.Tensor:
    """Row index of every stored value of a CSR matrix."""
    rows = torch.arange(x_ng.shape[0], device=x_ng.crow_indices().device)
    return repeat_per_stored_value(x_ng, rows)


class _SharedStructure:
    """Inside :func:`flat_positions_shared`: the flat positions of the last CSR structure asked for,
    with that structure's index tensors.

    The counts and the expression of one batch share ``crow``/``col`` (per-cell steps only replace
    the values), and both are made dense: the positions are computed once per batch. Holding the
    index tensors keeps their memory alive, so equal data pointers mean the same, unchanged
    indices (CSR indices are never written in place). Everything is dropped when the outermost
    block ends, so no batch's positions outlive its pipeline call (on a GPU they can be large).
    """

    depth = 0
    key: tuple[object, ...] | None = None
    held: tuple[torch.Tensor, torch.Tensor] | None = None
    positions: torch.Tensor | None = None


@contextmanager
def flat_positions_shared() -> Iterator[None]:
    """Within the block, :func:`flat_positions_of_stored_values` reuses the positions of the last
    structure it saw (``Pipeline.forward`` runs its steps in such a block)."""
    _SharedStructure.depth += 1
    try:
        yield
    finally:
        _SharedStructure.depth -= 1
        if _SharedStructure.depth == 0:
            _SharedStructure.key = _SharedStructure.held = _SharedStructure.positions = None


def flat_positions_of_stored_values(x_ng: torch.Tensor) -> torch.Tensor:
    """``row * n_columns + column`` of every stored value: where it lands in the flattened dense
    matrix, so one 1-D ``index_copy_`` writes them all (faster than a 2-D ``index_put_``)."""
    crow, col = x_ng.crow_indices(), x_ng.col_indices()
    key = (crow.data_ptr(), crow.numel(), col.data_ptr(), col.numel(), tuple(x_ng.shape))
    shared = _SharedStructure
    if shared.depth and shared.key == key and shared.positions is not None:
        return shared.positions
    row_starts = torch.arange(x_ng.shape[0], device=crow.device) * x_ng.shape[1]
    positions = repeat_per_stored_value(x_ng, row_starts) + col.to(torch.int64)
    if shared.depth:
        shared.key, shared.held, shared.positions = key, (crow, col), positions
    return positions
