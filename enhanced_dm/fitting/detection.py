"""Which genes are detected (a non-zero count) in at least one train cell: an exact, DDP-summable
count per gene."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torchmetrics import Metric

__all__ = ["DetectedGenesMetric"]


class DetectedGenesMetric(Metric):
    """Cells with a non-zero ``batch[key]`` value, per gene (float64 sums over ranks).

    CSR batches are counted from their stored non-zero values, dense ones by comparison; the
    result ``{"detected_cells_g": ...}`` is the same for both.
    """

    full_state_update = False
    higher_is_better = None
    is_differentiable = False
    detected_cells_g: torch.Tensor

    def __init__(self, n_genes: int, key: str = "counts_ng") -> None:
        super().__init__()
        self.key = key
        self.add_state(
            "detected_cells_g", torch.zeros(n_genes, dtype=torch.float64), dist_reduce_fx="sum"
        )

    def update(self, batch: Mapping[str, torch.Tensor]) -> None:
        values = batch[self.key]
        if values.layout == torch.sparse_csr:
            genes = values.col_indices()[values.values() != 0]
            counts = torch.bincount(genes, minlength=self.detected_cells_g.shape[0])
        else:
            counts = (values != 0).sum(0)
        self.detected_cells_g += counts.to(torch.float64)

    def compute(self) -> dict[str, torch.Tensor]:
        return {"detected_cells_g": self.detected_cells_g.clone()}
