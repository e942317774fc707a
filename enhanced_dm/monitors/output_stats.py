"""A torchmetrics Metric that watches one transform's output: scale, zeros, clipping, NaN/inf."""

from __future__ import annotations

import torch
from torchmetrics import Metric

__all__ = ["OutputStatsMetric"]


class OutputStatsMetric(Metric):
    """Running summary of a tensor a transform writes (rows are cells).

    States are sums / min / max in float64, reduced across DDP ranks by torchmetrics, so
    ``compute()`` gives the global figures. Non-finite values are counted and left out of the
    moments, so one bad value does not hide the rest.
    """

    full_state_update = False
    higher_is_better = None
    is_differentiable = False

    def __init__(self, clip_value: float | None = None) -> None:
        super().__init__()
        self.clip_value = clip_value
        scalar = torch.zeros((), dtype=torch.float64)
        for name in ("cells", "values", "total", "total_sq", "zeros", "nonfinite", "clipped"):
            self.add_state(name, scalar.clone(), dist_reduce_fx="sum")
        self.add_state(
            "minimum", torch.tensor(float("inf"), dtype=torch.float64), dist_reduce_fx="min"
        )
        self.add_state(
            "maximum", torch.tensor(float("-inf"), dtype=torch.float64), dist_reduce_fx="max"
        )

    def update(self, values: torch.Tensor) -> None:
        values = values.detach()
        finite = torch.isfinite(values)
        clean = torch.where(finite, values, torch.zeros_like(values)).to(torch.float64)
        n_finite = finite.sum()
        self.cells += values.shape[0] if values.dim() else 1
        self.values += n_finite
        self.nonfinite += values.numel() - n_finite
        self.total += clean.sum()
        self.total_sq += (clean * clean).sum()
        self.zeros += ((values == 0) & finite).sum()
        if self.clip_value is not None:
            self.clipped += (clean.abs() >= self.clip_value).sum()
        if values.numel():
            big = torch.tensor(float("inf"), dtype=torch.float64, device=clean.device)
            self.minimum = torch.minimum(self.minimum, torch.where(finite, clean, big).min())
            self.maximum = torch.maximum(self.maximum, torch.where(finite, clean, -big).max())

    def compute(self) -> dict[str, float]:
        count = self.values.clamp_min(1)
        mean = self.total / count
        variance = (self.total_sq / count - mean * mean).clamp_min(0)
        n_all = (self.values + self.nonfinite).clamp_min(1)
        return {
            "cells_seen": float(self.cells),
            "mean": float(mean),
            "std": float(variance.sqrt()),
            "min": float(self.minimum) if self.values > 0 else 0.0,
            "max": float(self.maximum) if self.values > 0 else 0.0,
            "zero_fraction": float(self.zeros / n_all),
            "nonfinite_count": float(self.nonfinite),
            "clipped_fraction": float(self.clipped / n_all),
        }
