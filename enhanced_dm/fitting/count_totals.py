"""Exact per-gene count totals over the train split (the statistics of Pearson residuals)."""

from __future__ import annotations

from collections.abc import Mapping

import torch

from enhanced_dm.fitting.moments import GroupedMomentsMetric
from enhanced_dm.transforms.functional_rank import require_counts

__all__ = ["CountTotalsMetric"]


class CountTotalsMetric(GroupedMomentsMetric):
    r"""Each gene's share of all train counts, and the number of train cells, globally and per group.

    .. math:: p_g = \frac{\sum_c x_{cg}}{\sum_{c,g} x_{cg}}, \qquad N = \#\{\text{train cells}\}

    The float64 sums of :class:`~enhanced_dm.fitting.moments.GroupedMomentsMetric` (exact for
    counts below :math:`2^{53}`, merged across DDP ranks by summation). Every batch is checked to
    hold non-negative integers first (:func:`~enhanced_dm.transforms.functional_rank.require_counts`).
    A group without counts keeps ``fitted_b`` false and uses the global statistics.
    """

    count: torch.Tensor
    count_b: torch.Tensor
    sum_g: torch.Tensor
    sum_bg: torch.Tensor

    def __init__(
        self,
        n_features: int,
        n_groups: int = 0,
        key: str = "counts_ng",
        group_key: str | None = None,
        what: str = "Pearson residuals",
    ) -> None:
        super().__init__(n_features, n_groups, key, group_key)
        self.what = what

    def check_batch(self, batch: Mapping[str, torch.Tensor]) -> None:
        require_counts(batch[self.key], self.what, self.key)

    def compute(self) -> dict[str, torch.Tensor]:
        total = self.sum_g.sum()
        total_b1 = self.sum_bg.sum(dim=1, keepdim=True)
        return {
            "gene_fraction_g": self.sum_g / total.clamp_min(1.0),
            "n_cells": self.count.clone(),
            "gene_fraction_bg": self.sum_bg / total_b1.clamp_min(1.0),
            "n_cells_b": self.count_b.clone(),
            "fitted_b": total_b1.flatten() > 0,
        }
