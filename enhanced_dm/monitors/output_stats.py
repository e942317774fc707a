"""A torchmetrics Metric that watches one transform's output: scale, zeros, clipping, NaN/inf."""

from __future__ import annotations

import torch
from torchmetrics import Metric

__all__ = ["OutputStatsMetric"]


class OutputStatsMetric(Metric):
    """Running summary of a tensor a transform writes (rows are cells), dense or sparse CSR.

    States are sums / min / max in float64, reduced across DDP ranks by torchmetrics, so
    ``compute()`` gives the global figures. Non-finite values are counted and left out of the
    moments, so one bad value does not hide the rest. The common all-finite case costs four reads
    of the values (float32 sum, sum of squares, non-zeros, min/max) accumulated into float64
    states; a sparse input is summarized from its stored values plus the implicit zeros.
    """

    full_state_update = False
    higher_is_better = None
    is_differentiable = False
    cells: torch.Tensor
    values: torch.Tensor
    total: torch.Tensor
    total_sq: torch.Tensor
    zeros: torch.Tensor
    nonfinite: torch.Tensor
    clipped: torch.Tensor
    minimum: torch.Tensor
    maximum: torch.Tensor

    def __init__(self, clip_value: float | None = None) -> None:
        super().__init__()
        self.clip_value = clip_value
        self.last_had_nonfinite = False
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
        """Add a batch. ``last_had_nonfinite`` then says whether it held NaN/inf (known from the
        sum anyway, so the NaN guard needs no extra pass; torchmetrics drops return values)."""
        values = values.detach()
        if values.layout == torch.sparse_csr:
            stored = values.values()
            implicit_zeros = values.shape[0] * values.shape[1] - stored.numel()
        else:
            stored = values.reshape(-1)
            implicit_zeros = 0
        if stored.dtype not in (torch.float32, torch.float64):
            stored = stored.to(torch.float32)
        self.cells += values.shape[0] if values.dim() else 1
        # A float32 (cascade) sum: ~70x faster on CPU than accumulating in float64, and NaN/inf
        # exactly when a value is, or when finite values overflow float32 (the rare path below
        # tells the two apart and then sums in float64).
        total = stored.sum().to(torch.float64)
        self.last_had_nonfinite = False
        if not bool(torch.isfinite(total)):
            finite = torch.isfinite(stored)
            n_nonfinite = stored.numel() - torch.count_nonzero(finite)
            self.last_had_nonfinite = bool(n_nonfinite > 0)
            self.nonfinite += n_nonfinite
            stored = stored[finite]
            total = stored.sum(dtype=torch.float64)
        self.values += stored.numel() + implicit_zeros
        self.total += total
        self.total_sq += torch.dot(stored, stored).to(torch.float64)
        self.zeros += stored.numel() - torch.count_nonzero(stored) + implicit_zeros
        if stored.numel():
            low, high = torch.aminmax(stored)
            if self.clip_value is not None and bool(torch.maximum(-low, high) >= self.clip_value):
                # count_nonzero of the mask: summing a bool tensor is ~20x slower on CPU
                self.clipped += torch.count_nonzero(stored.abs() >= self.clip_value)
            if implicit_zeros:
                low, high = low.clamp(max=0), high.clamp(min=0)
            self.minimum = torch.minimum(self.minimum, low.to(torch.float64))
            self.maximum = torch.maximum(self.maximum, high.to(torch.float64))
        elif implicit_zeros:
            zero = torch.zeros((), dtype=torch.float64, device=self.minimum.device)
            self.minimum = torch.minimum(self.minimum, zero)
            self.maximum = torch.maximum(self.maximum, zero)

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
