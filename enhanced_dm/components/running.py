"""Helpers for components whose state changes during training (moving statistics, memories)."""

from __future__ import annotations

import torch

__all__ = ["all_ranks_sum"]


def all_ranks_sum(tensor: torch.Tensor) -> torch.Tensor:
    """The sum of ``tensor`` over every DDP rank (itself when no process group is initialized).

    Running state must be identical on every rank, because Lightning saves rank 0's checkpoint
    only: a component sums a batch's contribution (counts, sums) over ranks before applying it,
    so every rank applies the same update. Every rank must call this for every training batch.
    """
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return tensor
    total = tensor.clone()
    torch.distributed.all_reduce(total, op=torch.distributed.ReduceOp.SUM)
    return total
