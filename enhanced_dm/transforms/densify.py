"""Densify the sparse count batch on the device and start the expression matrix."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager

import torch

from enhanced_dm.transforms import functional as F
from enhanced_dm.transforms.base import Batch, Transform

__all__ = ["Densify", "DensifyExpression", "counts_left_sparse"]


class Densify(Transform):
    """Make ``counts_ng`` (CSR on the way) dense and start ``x_ng`` as float32 counts.

    Counts keep their integer dtype, so mixed precision never casts them. ``x_ng`` stays sparse
    CSR while the per-cell steps (total count, log1p) work on stored values only;
    :class:`DensifyExpression` makes it dense before the gene-wise steps. With
    ``dense_counts=False`` (or inside :func:`counts_left_sparse`) ``counts_ng`` passes unchanged,
    as the CSR it arrived as: for models that read only ``x_ng``, one dense write less per batch.
    """

    reads_counts = False

    def __init__(self, dense_counts: bool = True) -> None:
        super().__init__()
        self.dense_counts = dense_counts

    def forward(self, batch: Mapping[str, torch.Tensor]) -> Batch:
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

    def forward(self, batch: Mapping[str, torch.Tensor]) -> Batch:
        return {"x_ng": F.densify(batch["x_ng"])}

    def __repr__(self) -> str:
        return "DensifyExpression()"


@contextmanager
def counts_left_sparse(steps: Iterable[Transform]) -> Iterator[None]:
    """Within the block, :class:`Densify` steps leave ``counts_ng`` sparse, unless one of
    ``steps`` reads the dense counts (``reads_counts``).

    For fitting passes: the z-score statistics, say, need only ``x_ng``, and densifying the
    counts of every batch would be a third of the pass for nothing.
    """
    steps = list(steps)
    leave_sparse = not any(step.reads_counts for step in steps)
    densifiers = [step for step in steps if isinstance(step, Densify)]
    chosen = [step.dense_counts for step in densifiers]
    for step, dense in zip(densifiers, chosen, strict=True):
        step.dense_counts = dense and not leave_sparse
    try:
        yield
    finally:
        for step, dense in zip(densifiers, chosen, strict=True):
            step.dense_counts = dense
