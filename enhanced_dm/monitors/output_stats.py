"""A torchmetrics Metric that watches one transform's output: scale, zeros, clipping, NaN/inf."""

from __future__ import annotations

import torch
from torchmetrics import Metric

from enhanced_dm.csr import dense_origin, stored_per_column

__all__ = ["OutputStatsMetric"]


class OutputStatsMetric(Metric):
    """Running summary of a tensor a transform writes (rows are cells), dense or sparse CSR.

    States are sums / min / max in float64, reduced across DDP ranks by torchmetrics, so
    ``compute()`` gives the global figures. Non-finite values are counted and left out of the
    moments, so one bad value does not hide the rest. The common all-finite case costs four reads
    of the values (float32 sum, sum of squares, non-zeros, min/max) accumulated into float64
    states; a sparse input is summarized from its stored values plus the implicit zeros, and so
    is a dense output a step wrote as a background row plus stored values (a z-score's).
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
        sum anyway, so the NaN guard needs no extra pass; torchmetrics drops return values).

        A dense tensor that a pipeline step built from a CSR matrix and a background row
        (:func:`~enhanced_dm.csr.dense_origin`) is summarized from those: the stored values
        plus, per column, the background value times the rows that do not store one.
        """
        values = values.detach()
        self.last_had_nonfinite = False
        origin = dense_origin(values) if values.layout == torch.strided else None
        if origin is not None and values.numel() and self._update_from_origin(*origin):
            return
        if values.layout == torch.sparse_csr:
            stored = values.values()
            implicit_zeros = values.shape[0] * values.shape[1] - stored.numel()
        else:
            stored = values.reshape(-1)
            implicit_zeros = 0
        if stored.dtype not in (torch.float32, torch.float64):
            stored = stored.to(torch.float32)
        self.cells.add_(values.shape[0] if values.dim() else 1)
        # A float32 (cascade) sum: ~70x faster on CPU than accumulating in float64, and NaN/inf
        # exactly when a value is, or when finite values overflow float32 (the rare path below
        # tells the two apart and then sums in float64).
        total = stored.sum().to(torch.float64)
        if not bool(torch.isfinite(total)):
            finite = torch.isfinite(stored)
            n_nonfinite = stored.numel() - torch.count_nonzero(finite)
            self.last_had_nonfinite = bool(n_nonfinite > 0)
            self.nonfinite.add_(n_nonfinite)
            stored = stored[finite]
            total = stored.sum(dtype=torch.float64)
        self.values.add_(stored.numel() + implicit_zeros)
        self.zeros.add_(implicit_zeros)
        extremes = self._add_finite(stored, total)
        if extremes is not None:
            low, high = extremes
            if implicit_zeros:
                low, high = low.clamp(max=0), high.clamp(min=0)
            self._add_extremes(low, high)
        elif implicit_zeros:
            zero = torch.zeros((), dtype=torch.float64, device=self.minimum.device)
            self._add_extremes(zero, zero)

    def _update_from_origin(self, csr: torch.Tensor, background_g: torch.Tensor) -> bool:
        """The dense matrix's figures from its stored values and background row; False (nothing
        added) when either holds NaN/inf, which the dense path then counts value by value."""
        stored = csr.values()
        if not torch.is_floating_point(stored):
            return False
        stored_total = stored.sum().to(torch.float64)
        if not bool(torch.isfinite(stored_total + background_g.sum().to(torch.float64))):
            return False
        n_rows, n_columns = csr.shape
        unstored_g = n_rows - stored_per_column(csr)
        weights_g = unstored_g.to(torch.float64)
        row_g = background_g.to(torch.float64)
        self.cells.add_(n_rows)
        self.values.add_(n_rows * n_columns)
        self.total.add_(torch.dot(weights_g, row_g))
        self.total_sq.add_(torch.dot(weights_g, row_g * row_g))
        self.zeros.add_(torch.dot(weights_g, (row_g == 0).to(torch.float64)))
        shown_g = unstored_g > 0  # the background value appears in the matrix
        infinity = torch.tensor(float("inf"), dtype=background_g.dtype, device=stored.device)
        low = torch.where(shown_g, background_g, infinity).amin()
        high = torch.where(shown_g, background_g, -infinity).amax()
        if self.clip_value is not None:
            clipped_g = (row_g.abs() >= self.clip_value).to(torch.float64)
            self.clipped.add_(torch.dot(weights_g, clipped_g))
        extremes = self._add_finite(stored, stored_total)
        if extremes is not None:
            low, high = torch.minimum(low, extremes[0]), torch.maximum(high, extremes[1])
        self._add_extremes(low, high)
        return True

    def _add_finite(
        self, stored: torch.Tensor, total: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Add finite values (``total`` their float64 sum) to the sums, zeros and clipped
        counts; their (min, max), or None when there are none. Counts of values and cells are
        the caller's."""
        self.total.add_(total)
        self.total_sq.add_(torch.dot(stored, stored).to(torch.float64))
        if not stored.numel():
            return None
        low, high = torch.aminmax(stored)
        self.zeros.add_(self._zeros_among(stored, low, high))
        self.clipped.add_(self._clipped_among(stored, low, high))
        return low, high

    @staticmethod
    def _zeros_among(stored: torch.Tensor, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
        """Zeros among ``stored`` (whose extremes are ``low``/``high``): none without reading
        them again when all have one sign (counts, scaled counts, their logs)."""
        if stored.device.type == "cpu" and bool(low > 0 or high < 0):
            return torch.zeros((), dtype=torch.int64)
        return stored.numel() - torch.count_nonzero(stored)

    def _clipped_among(
        self, stored: torch.Tensor, low: torch.Tensor, high: torch.Tensor
    ) -> torch.Tensor:
        """Values at or beyond the clip value (none when the extremes are inside it)."""
        if self.clip_value is None or not bool(torch.maximum(-low, high) >= self.clip_value):
            return torch.zeros((), dtype=torch.int64, device=stored.device)
        # count_nonzero of the mask: summing a bool tensor is ~20x slower on CPU
        return torch.count_nonzero(stored.abs() >= self.clip_value)

    def _add_extremes(self, low: torch.Tensor, high: torch.Tensor) -> None:
        # In place (out=): assigning a Metric's state goes through nn.Module.__setattr__, which
        # costs more than the update's arithmetic on small batches.
        torch.minimum(self.minimum, low.to(torch.float64), out=self.minimum)
        torch.maximum(self.maximum, high.to(torch.float64), out=self.maximum)

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
