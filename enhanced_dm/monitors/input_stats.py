"""A torchmetrics Metric that watches the raw counts entering the pipeline: empty cells and genes."""

from __future__ import annotations

import torch
from torchmetrics import Metric

from enhanced_dm.csr import stored_per_column

__all__ = ["InputStatsMetric"]


class InputStatsMetric(Metric):
    """Counts cells with no counts and genes never expressed among the cells seen.

    ``update(counts_ng)`` takes the dense count batch (rows are cells, in the store's gene space).
    ``compute()`` reports ``cells_seen``, ``zero_count_cells`` (cells whose counts sum to 0 over
    the store's genes: normalization maps them to zeros, never NaN) and ``all_zero_genes`` (genes
    with no non-zero value in any cell seen since the last reset: their z-score scale is set to 1,
    so they stay 0). States are sums, reduced across DDP ranks by torchmetrics. ``n_genes`` sizes
    the per-gene state up front (needed for DDP); without it the state is sized by the first batch.
    """

    full_state_update = False
    higher_is_better = None
    is_differentiable = False
    cells: torch.Tensor
    zero_count_cells: torch.Tensor
    nonzero_cells_g: torch.Tensor

    def __init__(self, n_genes: int | None = None) -> None:
        super().__init__()
        scalar = torch.zeros((), dtype=torch.float64)
        self.add_state("cells", scalar.clone(), dist_reduce_fx="sum")
        self.add_state("zero_count_cells", scalar.clone(), dist_reduce_fx="sum")
        self.add_state(
            "nonzero_cells_g", torch.zeros(n_genes or 0, dtype=torch.float64), dist_reduce_fx="sum"
        )

    def update(self, counts_ng: torch.Tensor) -> None:
        """Add a count batch, sparse CSR (read from its stored values only) or dense."""
        counts_ng = counts_ng.detach()
        n_cells, n_genes = counts_ng.shape
        if self.nonzero_cells_g.numel() == 0:
            self.nonzero_cells_g = torch.zeros(
                n_genes, dtype=torch.float64, device=counts_ng.device
            )
        self.cells.add_(n_cells)
        if counts_ng.layout == torch.sparse_csr:
            self._update_sparse(counts_ng)
            return
        nonzero_ng = counts_ng != 0
        self.zero_count_cells.add_((~nonzero_ng.any(dim=-1)).sum())
        self.nonzero_cells_g.add_(torch.count_nonzero(nonzero_ng, dim=0))

    def _update_sparse(self, counts_ng: torch.Tensor) -> None:
        """From the stored values only; an explicitly stored zero counts for nothing."""
        values, n_genes = counts_ng.values(), counts_ng.shape[1]
        crow = counts_ng.crow_indices().to(torch.int64)
        # The usual case, stored means non-zero (counts are >= 0: a positive minimum says so),
        # skips the running count and shares the per-gene count with the monitors of the
        # batch's dense outputs; checked on the CPU only, where asking costs no device sync.
        if values.device.type == "cpu" and values.numel() and bool(values.min() > 0):
            self.zero_count_cells.add_(torch.count_nonzero(crow.diff() == 0))
            self.nonzero_cells_g.add_(stored_per_column(counts_ng))
            return
        # Non-zeros per cell from a running count read at the row boundaries (cheaper than a
        # scatter-add); stored zeros are binned past the last gene and dropped.
        nonzero = values != 0
        running = torch.cat([nonzero.new_zeros(1, dtype=torch.int64), nonzero.cumsum(0)])
        nonzero_per_cell = running[crow].diff()
        genes = counts_ng.col_indices().to(torch.int64).masked_fill(~nonzero, n_genes)
        self.zero_count_cells.add_(torch.count_nonzero(nonzero_per_cell == 0))
        self.nonzero_cells_g.add_(torch.bincount(genes, minlength=n_genes + 1)[:n_genes])

    def compute(self) -> dict[str, float]:
        return {
            "cells_seen": float(self.cells),
            "zero_count_cells": float(self.zero_count_cells),
            "all_zero_genes": float((self.nonzero_cells_g == 0).sum()),
            "genes": float(self.nonzero_cells_g.numel()),
        }
