"""Small helpers on torch sparse CSR tensors, shared by transforms, fitting and monitors."""

from __future__ import annotations

import torch

__all__ = [
    "flat_positions_of_stored_values",
    "repeat_per_stored_value",
    "rows_of_stored_values",
]


def repeat_per_stored_value(x_ng: torch.Tensor, per_row_n: torch.Tensor) -> torch.Tensor:
    """``per_row_n[row]`` for every stored value of a CSR matrix, in storage order (one pass,
    no index gather; no host sync: the size is known)."""
    crow = x_ng.crow_indices()
    return torch.repeat_interleave(per_row_n, crow.diff(), output_size=x_ng.values().numel())


def rows_of_stored_values(x_ng: torch.Tensor) -> torch.Tensor:
    """Row index of every stored value of a CSR matrix."""
    rows = torch.arange(x_ng.shape[0], device=x_ng.crow_indices().device)
    return repeat_per_stored_value(x_ng, rows)


def flat_positions_of_stored_values(x_ng: torch.Tensor) -> torch.Tensor:
    """``row * n_columns + column`` of every stored value: where it lands in the flattened dense
    matrix, so one 1-D ``scatter_`` writes them all (faster than a 2-D ``index_put_`` on CPU)."""
    row_starts = torch.arange(x_ng.shape[0], device=x_ng.crow_indices().device) * x_ng.shape[1]
    return repeat_per_stored_value(x_ng, row_starts) + x_ng.col_indices().to(torch.int64)
