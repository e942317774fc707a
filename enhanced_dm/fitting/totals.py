"""Exact median library size over the train split (``scanpy.pp.normalize_total(target_sum=None)``)."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

__all__ = ["MedianTotalMetric"]


class MedianTotalMetric(Metric):
    """Gathers each train cell's total count and returns the median of the non-zero ones.

    Memory is one float64 per train cell (8 MB per million cells); states are concatenated across
    DDP ranks, so the median is exact on any number of ranks.
    """

    full_state_update = False
    higher_is_better = None
    is_differentiable = False
    totals: list[torch.Tensor]

    def __init__(self, key: str = "total_counts_n") -> None:
        super().__init__()
        self.key = key
        self.add_state("totals", [], dist_reduce_fx="cat")

    def update(self, batch: Mapping[str, torch.Tensor]) -> None:
        self.totals.append(batch[self.key].to(torch.float64).reshape(-1))

    def compute(self) -> dict[str, torch.Tensor]:
        # After a DDP sync torchmetrics has already concatenated the list into one tensor.
        if isinstance(self.totals, torch.Tensor) or self.totals:
            totals = dim_zero_cat(self.totals)
        else:
            totals = torch.zeros(0, dtype=torch.float64)
        positive = totals[totals > 0]
        if positive.numel() == 0:
            median = torch.tensor(1.0, dtype=torch.float64)
        else:
            # np.median (mean of the two middle values) as scanpy; torch.quantile caps input size.
            median = torch.tensor(float(np.median(positive.cpu().numpy())), dtype=torch.float64)
        return {"target_sum": median}
