"""Gene-wise quantile normalization to a standard normal (or uniform) distribution."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import torch

from enhanced_dm.errors import ConfigError, FittingError
from enhanced_dm.fitting.rank_stats import QuantileStatsMetric
from enhanced_dm.transforms import functional as F
from enhanced_dm.transforms import functional_rank as R
from enhanced_dm.transforms.base import Batch
from enhanced_dm.transforms.grouped import GroupedTransform

if TYPE_CHECKING:
    from enhanced_dm.transforms.context import StepContext

__all__ = ["QuantileNormalize"]


class QuantileNormalize(GroupedTransform):
    r"""Map each gene through its fitted quantiles to a standard normal (or uniform) distribution.

    .. math:: y_{cg} = \Phi^{-1}\!\left(\hat F_g(x_{cg})\right) \text{ clipped to } \pm 5.1993,
              \qquad \hat F_g = \text{piecewise-linear interpolation of } (q_{g,k}, k/(K-1))

    ``sklearn.preprocessing.QuantileTransformer(n_quantiles, output_distribution)`` fitted on the
    train split and applied to every cell, with its tie and bound handling
    (:func:`~enhanced_dm.transforms.functional_rank.quantile_map`). ``K = min(n_quantiles, cells)``
    as in sklearn. Note sklearn's bound rule: every value at a gene's minimum (on sparse data, all
    the zeros of a gene not detected in every cell, however many) maps to -5.1993 with the normal
    output, not to the middle of the zeros' levels; we keep it for fidelity. The quantiles come from :class:`~enhanced_dm.fitting.rank_stats.QuantileStatsMetric`:
    exact on up to ``stats_max_cells`` train cells, a seeded uniform subsample above that, with
    the DKW bound of :mod:`enhanced_dm.fitting.subsample` (sklearn's own ``subsample=10_000`` is a
    random subsample too). Per group (``group_key``), each group has its own quantiles, fitted on
    its own cells (sklearn applied group by group); groups without train cells use the global ones.
    Buffers: ``quantiles_gq`` and ``references_q`` (``quantiles_bgq``, ``references_bq`` per
    group), resized when fitted; memory ``(1 + n_groups) x n_genes x K`` float32.
    """

    reads_counts = False  # reads x_ng (and total_counts_n), never the dense counts

    accepts_sparse = True  # the subsample keeps sparse rows; densified when applied

    quantiles_gq: torch.Tensor
    references_q: torch.Tensor
    quantiles_bgq: torch.Tensor
    references_bq: torch.Tensor

    def __init__(
        self,
        n_genes: int,
        n_groups: int = 0,
        group_key: str | None = None,
        n_quantiles: int = 1000,
        output_distribution: R.OutputDistribution = "normal",
        stats_max_cells: int = 100_000,
        seed: int = 0,
        key: str = "x_ng",
    ) -> None:
        super().__init__(n_groups, group_key, key)
        if output_distribution not in ("normal", "uniform"):
            raise ConfigError(
                f"output_distribution must be 'normal' or 'uniform', got {output_distribution!r}"
            )
        if int(n_quantiles) < 1:
            raise ConfigError(f"n_quantiles must be a positive integer, got {n_quantiles!r}")
        self.n_quantiles = int(n_quantiles)
        self.output_distribution = output_distribution
        self.stats_max_cells = int(stats_max_cells)
        self.seed = int(seed)
        self.clip_value = R.NORMAL_CLIP if output_distribution == "normal" else None
        references_q = R.quantile_references(2)
        self.register_buffer("quantiles_gq", torch.zeros(n_genes, 2))
        self.register_buffer("references_q", references_q)
        self.register_buffer("quantiles_bgq", torch.zeros(self.n_groups, n_genes, 2))
        self.register_buffer("references_bq", references_q.repeat(self.n_groups, 1))

    def config(self) -> dict[str, Any]:
        return {
            **super().config(),
            "n_quantiles": self.n_quantiles,
            "output_distribution": self.output_distribution,
            "stats_max_cells": self.stats_max_cells,
            "seed": self.seed,
        }

    def fit_metric(self) -> QuantileStatsMetric:
        return QuantileStatsMetric(
            int(self.quantiles_gq.shape[0]),
            n_quantiles=self.n_quantiles,
            max_cells=self.stats_max_cells,
            seed=self.seed,
            key=self.key,
            group_key=self.group_key,
            n_groups=self.n_groups,
        )

    def load_fitted(self, state: Mapping[str, torch.Tensor]) -> None:
        n_genes, n_groups = self.quantiles_gq.shape[0], self.n_groups
        if state["quantiles_gq"].shape[0] != n_genes or (
            n_groups and state["quantiles_bgq"].shape[:2] != (n_groups, n_genes)
        ):
            raise ValueError(
                f"{type(self).__name__}: saved quantiles do not fit this transform "
                f"({n_genes} genes, {n_groups} groups): another configuration or gene space?"
            )
        device = self.quantiles_gq.device
        self.quantiles_gq = state["quantiles_gq"].to(device, torch.float32)
        self.references_q = state["references_q"].to(device, torch.float64)
        if self.n_groups:
            fitted_b = state["fitted_b"] if "fitted_b" in state else state["subsample_cells_b"] > 0
            self.quantiles_bgq = state["quantiles_bgq"].to(device, torch.float32)
            self.references_bq = state["references_bq"].to(device, torch.float64)
            self.fitted_b = fitted_b.to(device)
        self.fitted = True

    def restore_fitted(self, state: Mapping[str, torch.Tensor]) -> None:
        """Buffers saved by ``fitted_state()``; their number of levels is that of the fit."""
        self.load_fitted(state)

    def forward(
        self, batch: Mapping[str, torch.Tensor], context: StepContext | None = None
    ) -> Batch:
        if not self.fitted:
            raise FittingError(f"{self!r} is used before its quantiles were fitted")
        x_ng = F.densify(batch[self.key])
        distribution = self.output_distribution
        if self.n_groups == 0:
            return {
                self.key: R.quantile_map(x_ng, self.quantiles_gq, self.references_q, distribution)
            }
        assert self.group_key is not None
        group_n = batch[self.group_key]
        own_n = F.gather_group_rows(
            torch.arange(self.n_groups, device=x_ng.device).unsqueeze(1),
            torch.full((1,), -1, device=x_ng.device),
            group_n,
            self.fitted_b,
        ).squeeze(1)
        y_ng = torch.empty(x_ng.shape, dtype=torch.float32, device=x_ng.device)
        for group in torch.unique(own_n).tolist():
            rows = torch.nonzero(own_n == group).flatten()
            if group < 0:
                quantiles_gq, references_q = self.quantiles_gq, self.references_q
            else:
                quantiles_gq, references_q = self.quantiles_bgq[group], self.references_bq[group]
            y_ng[rows] = R.quantile_map(x_ng[rows], quantiles_gq, references_q, distribution)
        return {self.key: y_ng}

    def __repr__(self) -> str:
        group = f", group_key={self.group_key!r}" if self.group_key else ""
        return (
            f"QuantileNormalize(n_genes={self.quantiles_gq.shape[0]}, n_quantiles={self.n_quantiles}, "
            f"output_distribution={self.output_distribution!r}{group})"
        )
