"""Small helpers on torch sparse CSR tensors, shared by transforms, fitting and monitors."""

from __future__ import annotations

import torch

__all__ = ["rows_of_stored_values"]


def rows_of_stored_values(x_ng: torch.Tensor) -> torch.Tensor:
    """Row index of every stored value of a CSR matrix (no host sync: the size is known)."""
    crow = x_ng.crow_indices()
    rows = torch.arange(x_ng.shape[0], device=crow.device)
    return torch.repeat_interleave(rows, crow.diff(), output_size=x_ng.values().numel())
