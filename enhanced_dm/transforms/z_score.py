"""Gene-wise z-score with statistics fitted on the train split."""

from __future__ import annotations

from collections.abc import Mapping

import torch

from enhanced_dm.fitting.moments import GroupedMomentsMetric
from enhanced_dm.transforms.center_scale import CenterScaleTransform

__all__ = ["ZScore"]


class ZScore(CenterScaleTransform):
    r"""Standardize each gene to zero mean and unit variance.

    .. math:: y_{cg} = \operatorname{clip}\!\left(\frac{x_{cg} - \mu_g}{\sigma_g}, -m, m\right)

    :math:`\mu_g` and :math:`\sigma_g` (ddof=1; zero std becomes 1) are fitted on the train split,
    per group when ``group_key`` is given: ``scanpy.pp.scale(max_value=m)``, applied per group for
    the grouped form. Unlike scanpy, val/test/predict cells are scaled with the TRAIN statistics.
    """

    accepts_sparse = True  # fitted from the stored values; densified when applied

    def fit_metric(self) -> GroupedMomentsMetric:
        return GroupedMomentsMetric(self.center_g.shape[0], self.n_groups, self.key, self.group_key)

    def _center_scale(
        self, state: Mapping[str, torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        return (
            state["mean_g"],
            state["std_g"],
            state["mean_bg"],
            state["std_bg"],
            state["count_b"] > 0,
        )
