"""Every train cell's per-cell covariates, gathered for exact medians and quantiles."""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np
import torch
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

__all__ = ["QUANTILE_LEVELS", "CovariateTableMetric"]

QUANTILE_LEVELS = (0.0, 0.05, 0.25, 0.5, 0.75, 0.95, 1.0)


class CovariateTableMetric(Metric):
    """Gathers ``table(batch)`` (n x c per batch) for every train cell and returns, per column,
    the mean, the standard deviation (ddof=1) and the :data:`QUANTILE_LEVELS` quantiles
    (numpy's linear interpolation), plus the median of the positive values of column 0 and the
    fractions of cells whose column 0 over that median falls below / above ``relative_range``.

    Memory is c float64 per train cell (56 MB per million cells for seven columns); states are
    concatenated across DDP ranks, so every statistic is exact on any number of ranks.
    """

    full_state_update = False
    higher_is_better = None
    is_differentiable = False
    rows: list[torch.Tensor]

    def __init__(
        self,
        table: Callable[[Mapping[str, torch.Tensor]], torch.Tensor],
        relative_range: tuple[float, float] = (0.0, float("inf")),
    ) -> None:
        super().__init__()
        self.table = table
        self.relative_range = relative_range
        self.add_state("rows", [], dist_reduce_fx="cat")

    def update(self, batch: Mapping[str, torch.Tensor]) -> None:
        self.rows.append(self.table(batch).to(torch.float64))

    def compute(self) -> dict[str, torch.Tensor]:
        # After a DDP sync torchmetrics has already concatenated the list into one tensor.
        rows = dim_zero_cat(self.rows) if isinstance(self.rows, torch.Tensor) or self.rows else None
        if rows is None or rows.shape[0] == 0:
            raise ValueError("no train cell reached the covariate table")
        values = rows.cpu().numpy()
        positive = values[:, 0][values[:, 0] > 0]
        median = float(np.median(positive)) if len(positive) else 1.0
        relative = values[:, 0] / median
        std = values.std(axis=0, ddof=1) if len(values) > 1 else np.zeros(values.shape[1])
        return {
            "count": torch.tensor(float(len(values)), dtype=torch.float64),
            "mean_c": torch.from_numpy(values.mean(axis=0)),
            "std_c": torch.from_numpy(std),
            "quantiles_qc": torch.from_numpy(np.quantile(values, QUANTILE_LEVELS, axis=0)),
            "median_positive": torch.tensor(median, dtype=torch.float64),
            "fraction_below": torch.tensor(
                float(np.mean(relative < self.relative_range[0])), dtype=torch.float64
            ),
            "fraction_above": torch.tensor(
                float(np.mean(relative > self.relative_range[1])), dtype=torch.float64
            ),
        }
