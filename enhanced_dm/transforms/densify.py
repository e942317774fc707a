"""Densify the sparse count batch on the device and start the expression matrix."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

import torch

from enhanced_dm.transforms import functional as F
from enhanced_dm.transforms.base import Batch, Transform

if TYPE_CHECKING:
    from enhanced_dm.transforms.context import StepContext

__all__ = ["Densify", "DensifyExpression", "KeepLogExpression"]


class Densify(Transform):
    """Make ``counts_ng`` (CSR on the way) dense and start ``x_ng`` as float32 counts.

    Counts keep their integer dtype, so mixed precision never casts them. ``x_ng`` stays sparse
    CSR while the per-cell steps (total count, log1p) work on stored values only;
    :class:`DensifyExpression` makes it dense before the gene-wise steps. With
    ``dense_counts=False`` ``counts_ng`` passes unchanged, as the CSR it arrived as: for models that read only ``x_ng``, one dense write less per batch.
    """

    reads_counts = False

    def __init__(self, dense_counts: bool = True) -> None:
        super().__init__()
        self.dense_counts = dense_counts

    def forward(
        self, batch: Mapping[str, torch.Tensor], context: StepContext | None = None
    ) -> Batch:
        counts = batch["counts_ng"]
        if counts.layout == torch.sparse_csr:
            x_ng = F.map_stored_values(counts, counts.values().to(torch.float32))
        else:
            x_ng = counts.to(torch.float32)
        return {"counts_ng": F.densify(counts) if self.dense_counts else counts, "x_ng": x_ng}

    def __repr__(self) -> str:
        return "Densify()" if self.dense_counts else "Densify(dense_counts=False)"


class DensifyExpression(Transform):
    """Make ``x_ng`` dense (after the per-cell steps, before gene-wise ones and the model)."""

    monitored = False  # same values as the step before, in another layout
    reads_counts = False

    def forward(
        self, batch: Mapping[str, torch.Tensor], context: StepContext | None = None
    ) -> Batch:
        return {"x_ng": F.densify(batch["x_ng"])}

    def __repr__(self) -> str:
        return "DensifyExpression()"


class KeepLogExpression(Transform):
    """Keep the log-normalized ``x_ng`` as ``x_log_ng`` before the gene-wise step replaces it.

    Added by the pipeline builder only when a later step declares ``reads_log_expression``.
    A dense ``x_ng`` is shared, not copied (transforms never mutate their inputs); a sparse one is
    densified, which is the one extra dense write this costs.
    """

    monitored = False
    reads_counts = False
    output_key = "x_log_ng"

    def forward(
        self, batch: Mapping[str, torch.Tensor], context: StepContext | None = None
    ) -> Batch:
        return {"x_log_ng": F.densify(batch["x_ng"])}

    def __repr__(self) -> str:
        return "KeepLogExpression()"
