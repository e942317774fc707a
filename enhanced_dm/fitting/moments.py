"""Exact, DDP-mergeable first and second moments per gene, globally and per group."""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar

import numpy as np
import torch
from torchmetrics import Metric

from enhanced_dm.csr import rows_of_stored_values

__all__ = ["GroupedMomentsMetric", "RawMomentsMetric", "moments_to_mean_std", "scale_or_one"]

_COMPILED_DTYPES = (torch.float32, torch.float64, torch.int32, torch.int64)
"""Stored-value dtypes the compiled CPU sums take (others go through scatter-adds)."""
COMPILED_MIN_VALUES = 2**16
"""Batches storing fewer values use scatter-adds: importing numba (~0.3 s, ~100 MB of LLVM) and
compiling would cost more than small batches gain (the bundled demo's batches never reach it)."""


class GroupedMomentsMetric(Metric):
    r"""Counts, sums and sums of squares of ``batch[key]`` per group code, in float64.

    States are plain sums (``dist_reduce_fx="sum"``), so the result on N ranks equals the result on
    one rank up to float64 rounding. Cells with a group code outside ``[0, n_groups)`` (a missing
    label) count towards the global statistics only.
    """

    full_state_update = False
    higher_is_better = None
    is_differentiable = False
    fused_fitting: ClassVar[bool] = True
    """``update`` reads only ``batch[key]`` and ``batch[group_key]``: the fused fitting pass
    (:mod:`~enhanced_dm.fitting.fused`) may hand it the per-cell steps' output directly; a
    subclass whose ``update`` reads more sets it False."""
    count: torch.Tensor
    sum_g: torch.Tensor
    sumsq_g: torch.Tensor
    count_b: torch.Tensor
    sum_bg: torch.Tensor
    sumsq_bg: torch.Tensor

    def __init__(
        self, n_features: int, n_groups: int = 0, key: str = "x_ng", group_key: str | None = None
    ) -> None:
        super().__init__()
        self.key = key
        self.group_key = group_key
        self.n_groups = n_groups
        zeros_g = torch.zeros(n_features, dtype=torch.float64)
        self.add_state("count", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("sum_g", zeros_g.clone(), dist_reduce_fx="sum")
        self.add_state("sumsq_g", zeros_g.clone(), dist_reduce_fx="sum")
        zeros_bg = torch.zeros(n_groups, n_features, dtype=torch.float64)
        self.add_state("count_b", torch.zeros(n_groups, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("sum_bg", zeros_bg.clone(), dist_reduce_fx="sum")
        self.add_state("sumsq_bg", zeros_bg.clone(), dist_reduce_fx="sum")

    def update(self, batch: Mapping[str, torch.Tensor]) -> None:
        """Add the cells of ``batch[self.key]`` (dense, or CSR: read from its stored values)."""
        self.check_batch(batch)
        if batch[self.key].layout == torch.sparse_csr:
            self._update_sparse(batch)
            return
        x_ng = batch[self.key].to(torch.float64)
        self.count += x_ng.shape[0]
        self.sum_g += x_ng.sum(0)
        self.sumsq_g += (x_ng * x_ng).sum(0)
        if self.group_key is None or self.n_groups == 0:
            return
        group_n = batch[self.group_key].long()
        valid_n = (group_n >= 0) & (group_n < self.n_groups)
        group_n, x_ng = group_n[valid_n], x_ng[valid_n]
        self.count_b.index_add_(0, group_n, torch.ones_like(group_n, dtype=torch.float64))
        self.sum_bg.index_add_(0, group_n, x_ng)
        self.sumsq_bg.index_add_(0, group_n, x_ng * x_ng)

    def check_batch(self, batch: Mapping[str, torch.Tensor]) -> None:
        """Refuse a batch these statistics cannot be fitted on (subclasses; any by default)."""

    def _update_sparse(self, batch: Mapping[str, torch.Tensor]) -> None:
        """The same sums from the stored values of a CSR batch (zeros add nothing to them): on
        the CPU in one compiled pass (:func:`~enhanced_dm.fitting.stored_sums.add_stored_moments`)
        from :data:`COMPILED_MIN_VALUES` stored values on, otherwise with scatter-adds."""
        x_ng = batch[self.key].detach()
        n_cells, n_genes = x_ng.shape
        group_n = None
        if self.group_key is not None and self.n_groups > 0:
            group_n = batch[self.group_key].long()
            valid_n = (group_n >= 0) & (group_n < self.n_groups)
            self.count_b.index_add_(
                0, group_n[valid_n], torch.ones_like(group_n[valid_n], dtype=torch.float64)
            )
        self.count += n_cells
        values = x_ng.values()
        compiled = values.dtype in _COMPILED_DTYPES and values.numel() >= COMPILED_MIN_VALUES
        if x_ng.device.type == "cpu" and compiled:
            from enhanced_dm.fitting.stored_sums import add_stored_moments

            add_stored_moments(
                values.numpy(),
                x_ng.col_indices().numpy(),
                x_ng.crow_indices().numpy(),
                np.full(n_cells, -1) if group_n is None else group_n.numpy(),
                self.sum_g.numpy(),
                self.sumsq_g.numpy(),
                self.sum_bg.numpy(),
                self.sumsq_bg.numpy(),
            )
            return
        values = values.to(torch.float64)
        genes = x_ng.col_indices().to(torch.int64)
        # scatter_add_: about 2x faster than index_add_ on CPU for this shape (same sums)
        self.sum_g.scatter_add_(0, genes, values)
        self.sumsq_g.scatter_add_(0, genes, values * values)
        if group_n is None:
            return
        cells = rows_of_stored_values(x_ng)
        keep = valid_n[cells]
        flat = group_n[cells][keep] * n_genes + genes[keep]
        self.sum_bg.view(-1).scatter_add_(0, flat, values[keep])
        self.sumsq_bg.view(-1).scatter_add_(0, flat, values[keep] ** 2)

    def compute(self) -> dict[str, torch.Tensor]:
        mean_g, std_g = moments_to_mean_std(self.count, self.sum_g, self.sumsq_g)
        mean_bg, std_bg = moments_to_mean_std(
            self.count_b.unsqueeze(-1), self.sum_bg, self.sumsq_bg
        )
        return {
            "count": self.count.clone(),
            "mean_g": mean_g,
            "std_g": std_g,
            "count_b": self.count_b.clone(),
            "mean_bg": mean_bg,
            "std_bg": std_bg,
        }


def scale_or_one(std: torch.Tensor) -> torch.Tensor:
    """``std``, with 1 where it is zero or below float32's smallest normal number: such a spread is
    zero in the float32 buffers it becomes (real files hold denormal values such as 1e-45 FPKM),
    and scaling by 1 never divides by ~0 (``scanpy.pp.scale``'s zero-std rule)."""
    return torch.where(std >= torch.finfo(torch.float32).tiny, std, torch.ones_like(std))


def moments_to_mean_std(
    count: torch.Tensor, total: torch.Tensor, total_sq: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Mean and sample standard deviation (ddof=1) from sums, as ``scanpy.pp.scale`` computes them.

    .. math:: \mu = S_1 / n, \qquad \sigma = \sqrt{\frac{S_2 - n\mu^2}{n - 1}}

    A zero (or undefined, n < 2) standard deviation becomes 1, as in scanpy, so scaling never
    divides by zero; so does one below float32's smallest normal number (:func:`scale_or_one`).
    Sums are float64: on log-normalized data the cancellation error is far below float32
    resolution.
    """
    safe_count = count.clamp_min(1.0)
    mean = total / safe_count
    variance = (total_sq - safe_count * mean * mean).clamp_min(0.0) / (count - 1.0).clamp_min(1.0)
    std = torch.where(count > 1, scale_or_one(variance.sqrt()), 1.0)
    return mean, std


class RawMomentsMetric(GroupedMomentsMetric):
    """:class:`GroupedMomentsMetric` returning its sums as they are (``count``, ``sum_g``,
    ``sumsq_g``, ``count_b``, ``sum_bg``, ``sumsq_bg``): for statistics that need the exact
    second moments (a zero variance stays zero)."""

    def compute(self) -> dict[str, torch.Tensor]:
        names = ("count", "sum_g", "sumsq_g", "count_b", "sum_bg", "sumsq_bg")
        return {name: getattr(self, name).clone() for name in names}
