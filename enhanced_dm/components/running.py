"""Helpers for components whose state changes during training (moving statistics, memories)."""

from __future__ import annotations

import torch

__all__ = ["all_ranks_gather", "all_ranks_sum"]


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


def all_ranks_gather(tensor: torch.Tensor) -> torch.Tensor:
    """Every rank's ``tensor`` concatenated along dim 0 in rank order (itself without a process
    group); ranks may hold different numbers of rows. Every rank must call it."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return tensor
    world = torch.distributed.get_world_size()
    rows = torch.tensor([tensor.shape[0]], device=tensor.device)
    sizes = [torch.zeros_like(rows) for _ in range(world)]
    torch.distributed.all_gather(sizes, rows)
    most = int(max(int(size) for size in sizes))
    padded = tensor.new_zeros((most, *tensor.shape[1:]))
    padded[: tensor.shape[0]] = tensor
    parts = [torch.zeros_like(padded) for _ in range(world)]
    torch.distributed.all_gather(parts, padded)
    return torch.cat([part[: int(size)] for part, size in zip(parts, sizes, strict=True)])
