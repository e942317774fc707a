"""Analytic Pearson residuals on raw counts (Lause, Berens & Kobak 2021)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import torch

from enhanced_dm.errors import ConfigError, FittingError
from enhanced_dm.fitting.count_totals import CountTotalsMetric
from enhanced_dm.transforms import functional as F
from enhanced_dm.transforms import functional_rank as R
from enhanced_dm.transforms.base import Batch
from enhanced_dm.transforms.grouped import GroupedTransform

if TYPE_CHECKING:
    from enhanced_dm.transforms.context import StepContext

__all__ = ["PearsonResiduals"]


class PearsonResiduals(GroupedTransform):
    r"""Pearson residuals of raw counts under a negative binomial with overdispersion ``theta``.

    .. math::

        \mu_{cg} = \frac{n_c\, T_g}{T}, \qquad
        z_{cg} = \operatorname{clip}\!\left(\frac{x_{cg} - \mu_{cg}}{\sqrt{\mu_{cg} + \mu_{cg}^2/\theta}},
                 -k, k\right), \qquad k = \sqrt{N} \text{ when } \texttt{clip=None}

    ``scanpy.experimental.pp.normalize_pearson_residuals(theta=θ, clip=k)``, with the gene totals
    :math:`T_g`, the grand total :math:`T` and the number of cells :math:`N` fitted on the TRAIN
    split (:class:`~enhanced_dm.fitting.count_totals.CountTotalsMetric`, exact sums) instead of
    on the matrix at hand; :math:`n_c` is the cell's sum over the genes of ``counts_ng``, as
    scanpy sums the matrix. It reads ``counts_ng`` and writes ``x_ng``, so it needs no total-count
    or log step before it, and it refuses non-integer counts (FPKM, TPM, log values) with a
    :class:`~enhanced_dm.errors.DataFileError` naming the value found.

    Per group (``group_key``): :math:`T_g`, :math:`T` and :math:`N` (hence the default clip
    :math:`\sqrt{N_b}`) are fitted per group, so each group's residuals equal scanpy's function
    applied to that group's cells alone, the per-batch model of scanpy's
    ``highly_variable_genes(flavor="pearson_residuals", batch_key=...)``. Groups without train
    counts use the global statistics.
    """

    gene_fraction_g: torch.Tensor
    n_cells: torch.Tensor
    gene_fraction_bg: torch.Tensor
    n_cells_b: torch.Tensor

    def __init__(
        self,
        n_genes: int,
        n_groups: int = 0,
        group_key: str | None = None,
        theta: float = 100.0,
        clip: float | None = None,
        counts_key: str = "counts_ng",
        key: str = "x_ng",
    ) -> None:
        super().__init__(n_groups, group_key, key)
        if not theta > 0:
            raise ConfigError(f"Pearson residuals need theta > 0, got {theta!r}")
        if clip is not None and not clip >= 0:
            raise ConfigError(f"Pearson residuals need clip >= 0 or clip=None, got {clip!r}")
        self.theta = float(theta)
        self.clip = None if clip is None else float(clip)
        self.counts_key = counts_key
        self.register_buffer("gene_fraction_g", torch.zeros(n_genes))
        self.register_buffer("n_cells", torch.zeros((), dtype=torch.float64))
        self.register_buffer("gene_fraction_bg", torch.zeros(self.n_groups, n_genes))
        self.register_buffer("n_cells_b", torch.zeros(self.n_groups, dtype=torch.float64))

    def config(self) -> dict[str, Any]:
        return {
            **super().config(),
            "theta": self.theta,
            "clip": self.clip,
            "counts_key": self.counts_key,
        }

    def fit_metric(self) -> CountTotalsMetric:
        return CountTotalsMetric(
            int(self.gene_fraction_g.shape[0]),
            self.n_groups,
            self.counts_key,
            self.group_key,
            what=type(self).__name__,
        )

    def load_fitted(self, state: Mapping[str, torch.Tensor]) -> None:
        """The metric's result is named after the buffers, so it restores like a saved state."""
        self.restore_fitted(state)

    @property
    def clip_value(self) -> float | None:  # type: ignore[override]
        r"""The clip bound monitors count against: ``clip``, or :math:`\sqrt{N}` once fitted
        without groups (per group the bound differs by group, so none is reported)."""
        if self.clip is not None:
            return self.clip
        if self.fitted and self.n_groups == 0:
            return math.sqrt(float(self.n_cells))
        return None

    def forward(
        self, batch: Mapping[str, torch.Tensor], context: StepContext | None = None
    ) -> Batch:
        if not self.fitted:
            raise FittingError(f"{self!r} is used before its gene totals were fitted")
        counts_ng = batch[self.counts_key]
        if torch.is_floating_point(counts_ng):
            R.require_counts(counts_ng, type(self).__name__, self.counts_key)
        if self.n_groups == 0:
            clip = self.clip if self.clip is not None else math.sqrt(float(self.n_cells))
            return {
                self.key: R.pearson_residuals(counts_ng, self.gene_fraction_g, self.theta, clip)
            }
        assert self.group_key is not None
        group_n = batch[self.group_key]
        fraction_ng = F.gather_group_rows(
            self.gene_fraction_bg, self.gene_fraction_g, group_n, self.fitted_b
        )
        if self.clip is not None:
            clip_n: torch.Tensor | float = self.clip
        else:
            clip_n = (
                F.gather_group_rows(
                    self.n_cells_b.unsqueeze(1), self.n_cells.reshape(1), group_n, self.fitted_b
                )
                .squeeze(1)
                .sqrt()
            )
        return {self.key: R.pearson_residuals(counts_ng, fraction_ng, self.theta, clip_n)}

    def __repr__(self) -> str:
        group = f", group_key={self.group_key!r}" if self.group_key else ""
        return f"PearsonResiduals(n_genes={self.gene_fraction_g.shape[0]}, theta={self.theta}, clip={self.clip}{group})"
