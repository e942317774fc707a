"""Small helpers on torch sparse CSR tensors, shared by transforms, fitting and monitors."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import numpy as np
import torch

__all__ = [
    "dense_origin",
    "flat_positions_of_stored_values",
    "remember_dense_origin",
    "repeat_per_stored_value",
    "rows_of_stored_values",
    "shared_csr_structure",
    "stored_per_column",
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


class _SharedStructure(threading.local):
    """Inside :func:`shared_csr_structure`: what was derived from the last CSR structure asked
    for (flat positions, stored values per column), with that structure's index tensors, and the
    CSR forms of the dense tensors :func:`remember_dense_origin` was told about.

    The counts and the expression of one batch share ``crow``/``col`` (per-cell steps only replace
    the values), and both are made dense and summarized: what depends on the structure alone is
    computed once per batch. Holding the index tensors keeps their memory alive, so equal data
    pointers mean the same, unchanged indices (CSR indices are never written in place).
    Everything is dropped when the outermost block ends, so nothing of a batch outlives its
    pipeline call (on a GPU it can be large). Per thread: pipelines run in two threads at once
    do not see each other's batches.
    """

    def __init__(self) -> None:
        self.depth = 0
        self.clear()

    def clear(self) -> None:
        self.key: tuple[object, ...] | None = None
        self.held: tuple[torch.Tensor, torch.Tensor] | None = None
        self.derived: dict[str, torch.Tensor] = {}
        self.origins: list[tuple[torch.Tensor, int | None, torch.Tensor, torch.Tensor | None]] = []


_shared = _SharedStructure()


@contextmanager
def shared_csr_structure() -> Iterator[None]:
    """Within the block, what is derived from a CSR structure (:func:`flat_positions_of_stored_values`,
    :func:`stored_per_column`) is reused for the last structure seen, and dense tensors can carry
    their CSR origin to the monitors (``Pipeline.forward`` runs its steps in such a block)."""
    _shared.depth += 1
    try:
        yield
    finally:
        _shared.depth -= 1
        if _shared.depth == 0:
            _shared.clear()


def _derived(x_ng: torch.Tensor, name: str, compute: Callable[[], torch.Tensor]) -> torch.Tensor:
    """``compute()``, or inside :func:`shared_csr_structure` the value kept for this structure."""
    if not _shared.depth:
        return compute()
    crow, col = x_ng.crow_indices(), x_ng.col_indices()
    key = (crow.data_ptr(), crow.numel(), col.data_ptr(), col.numel(), tuple(x_ng.shape))
    if _shared.key != key:
        _shared.key, _shared.held, _shared.derived = key, (crow, col), {}
    if name not in _shared.derived:
        _shared.derived[name] = compute()
    return _shared.derived[name]


def flat_positions_of_stored_values(x_ng: torch.Tensor) -> torch.Tensor:
    """``row * n_columns + column`` of every stored value: where it lands in the flattened dense
    matrix, so one 1-D ``index_copy_`` writes them all (faster than a 2-D ``index_put_``)."""

    def compute() -> torch.Tensor:
        crow, col = x_ng.crow_indices(), x_ng.col_indices()
        row_starts = torch.arange(x_ng.shape[0], device=crow.device) * x_ng.shape[1]
        positions = repeat_per_stored_value(x_ng, row_starts)
        return positions.add_(col)  # in place: int32 columns add into the fresh int64 starts

    return _derived(x_ng, "flat_positions", compute)


def stored_per_column(x_ng: torch.Tensor) -> torch.Tensor:
    """How many values each column stores (int64; explicitly stored zeros count)."""
    return _derived(
        x_ng, "per_column", lambda: torch.bincount(x_ng.col_indices(), minlength=x_ng.shape[1])
    )


def remember_dense_origin(
    dense: torch.Tensor, csr: torch.Tensor, background_g: torch.Tensor | None = None
) -> None:
    """Record, inside :func:`shared_csr_structure`, that ``dense`` holds ``csr``'s stored values
    on rows of ``background_g`` (zeros when None): a monitor can then summarize it from the
    stored values and the row (:func:`dense_origin`) instead of reading every entry. Outside a
    block it does nothing. ``csr`` must be canonical (no repeated position), as CSR from
    AnnData and from the readers is."""
    if _shared.depth:
        _shared.origins.append((dense, _version(dense), csr, background_g))


def dense_origin(dense: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
    """``(csr, background_g)`` recorded for this tensor or a view of all of it (``detach()``;
    the row in its dtype), if it was not written in place since (the version counter, which
    views share, tells), else None."""
    for tensor, version, csr, background_g in _shared.origins:
        same = (
            dense.data_ptr() == tensor.data_ptr()
            and dense.shape == tensor.shape
            and dense.stride() == tensor.stride()
            and dense.dtype == tensor.dtype
        )
        if same and _version(dense) == version:
            if background_g is None:
                return csr, dense.new_zeros(dense.shape[-1])
            return csr, background_g.to(dense.dtype)
    return None


def _version(tensor: torch.Tensor) -> int | None:
    """The in-place write counter of ``tensor``; None for an inference-mode tensor, which keeps
    none (Lightning validates and predicts in inference mode): its recorded origin is trusted,
    as transforms return fresh outputs and never write a tensor after handing it on."""
    return None if tensor.is_inference() else tensor._version
