"""Exact rank statistics (median, MAD, quantiles) of the seeded cell subsample, per gene and group."""

from __future__ import annotations

import torch

from enhanced_dm.fitting.subsample import CellSubsampleMetric, sort_columns

__all__ = [
    "MAD_TO_STD",
    "MEAN_AD_TO_STD",
    "QuantileStatsMetric",
    "RobustStatsMetric",
    "sorted_median",
    "sorted_quantiles",
]

MAD_TO_STD = 1.4826
"""Median absolute deviation to standard deviation for a normal (``scipy``'s ``scale="normal"``)."""

MEAN_AD_TO_STD = 1.2533
r"""Mean absolute deviation to standard deviation for a normal, :math:`\sqrt{\pi / 2}`."""


def sorted_quantiles(sorted_nc: torch.Tensor, levels_q: torch.Tensor) -> torch.Tensor:
    r"""Quantiles at ``levels_q`` of each column of an ascending-sorted matrix (float64, ``q x c``).

    .. math:: Q(r) = v_{(\lfloor h \rfloor)} + (h - \lfloor h \rfloor)\,(v_{(\lfloor h \rfloor + 1)} - v_{(\lfloor h \rfloor)}), \qquad h = r (n - 1)

    ``np.percentile(..., method="linear")``, which ``QuantileTransformer.fit`` uses.
    """
    n_rows = sorted_nc.shape[0]
    position_q = levels_q.to(device=sorted_nc.device, dtype=torch.float64) * (n_rows - 1)
    below_q = position_q.floor().long().clamp(0, n_rows - 1)
    above_q = (below_q + 1).clamp(max=n_rows - 1)
    weight_q1 = (position_q - below_q).unsqueeze(1)
    low, high = sorted_nc[below_q].to(torch.float64), sorted_nc[above_q].to(torch.float64)
    # numpy's _lerp: interpolate from the nearer end, so weight 1 gives exactly the upper value.
    return torch.where(
        weight_q1 < 0.5, low + (high - low) * weight_q1, high - (high - low) * (1 - weight_q1)
    )


def sorted_median(sorted_nc: torch.Tensor) -> torch.Tensor:
    """Median of each column of an ascending-sorted matrix, ``np.median`` (mean of the middle two)."""
    n_rows = sorted_nc.shape[0]
    low = sorted_nc[(n_rows - 1) // 2].to(torch.float64)
    high = sorted_nc[n_rows // 2].to(torch.float64)
    return 0.5 * (low + high)


class RobustStatsMetric(CellSubsampleMetric):
    r"""Median and robust scale of each gene on the cell subsample, globally and per group.

    .. math::

        c_g = \operatorname{median}_c x_{cg}, \quad
        \mathrm{MAD}_g = \operatorname{median}_c |x_{cg} - c_g|, \quad
        \mathrm{MeanAD}_g = \operatorname{mean}_c |x_{cg} - c_g|

        s_g = 1.4826\,\mathrm{MAD}_g \text{ if } \mathrm{MAD}_g > 0, \text{ else }
              1.2533\,\mathrm{MeanAD}_g \text{ if } > 0, \text{ else } 1

    ``np.median`` and ``scipy.stats.median_abs_deviation`` (``scale=1``) on the subsample; exact
    when the train split has at most ``max_cells`` cells (see :mod:`enhanced_dm.fitting.subsample`
    for the bound above that). Computed in float64, one gene chunk at a time.
    """

    def summarize(self, keep_k: torch.Tensor, group: int | None) -> dict[str, torch.Tensor]:
        center_g = torch.zeros(self.n_features, dtype=torch.float64, device=self.device)
        mad_g, mean_ad_g = center_g.clone(), center_g.clone()
        if bool(keep_k.any()):
            for genes, sorted_nc in self.sorted_chunks(keep_k):
                center_c = sorted_median(sorted_nc)
                deviation_nc = (sorted_nc.to(torch.float64) - center_c).abs()
                center_g[genes] = center_c
                mean_ad_g[genes] = deviation_nc.mean(dim=0)
                mad_g[genes] = sorted_median(sort_columns(deviation_nc))
        scale_g = torch.where(
            mad_g > 0,
            MAD_TO_STD * mad_g,
            torch.where(mean_ad_g > 0, MEAN_AD_TO_STD * mean_ad_g, torch.ones_like(mad_g)),
        )
        return {
            "center_g": center_g,
            "scale_g": scale_g,
            "mad_g": mad_g,
            "mean_absolute_deviation_g": mean_ad_g,
        }


class QuantileStatsMetric(CellSubsampleMetric):
    """Quantiles of each gene on the cell subsample at ``min(n_quantiles, cells)`` levels.

    ``QuantileTransformer(n_quantiles).fit`` on the subsample (``quantiles_`` transposed to genes
    x levels, ``references_``), per group on that group's cells. Every summary is padded to
    ``min(n_quantiles, subsample size)`` levels (at least 2) by repeating the top quantile and
    level (1, or 0 for a one-cell group, which sklearn fits as the single level 0), so groups
    stack into one tensor; :func:`~enhanced_dm.transforms.functional_rank.quantile_map`
    gives padded and unpadded quantiles the same result.
    """

    def __init__(self, n_features: int, n_quantiles: int = 1000, **kwargs: object) -> None:
        super().__init__(n_features, **kwargs)  # type: ignore[arg-type]
        if n_quantiles < 1:
            raise ValueError(f"n_quantiles must be at least 1, got {n_quantiles}")
        self.n_quantiles = n_quantiles

    def summarize(self, keep_k: torch.Tensor, group: int | None) -> dict[str, torch.Tensor]:
        n_padded = max(2, min(self.n_quantiles, int(self.subsample_mask().sum())))
        n_cells = int(keep_k.sum())
        n_levels = max(1, min(self.n_quantiles, n_cells))
        references_q = torch.linspace(0.0, 1.0, n_levels, dtype=torch.float64, device=self.device)
        references_q = torch.cat([references_q, references_q[-1:].expand(n_padded - n_levels)])
        quantiles_gq = torch.zeros(
            self.n_features, n_padded, dtype=torch.float32, device=self.device
        )
        if n_cells:
            for genes, sorted_nc in self.sorted_chunks(keep_k):
                quantiles_qc = sorted_quantiles(sorted_nc, references_q[:n_levels])
                quantiles_gq[genes, :n_levels] = quantiles_qc.t().to(torch.float32)
                quantiles_gq[genes, n_levels:] = quantiles_gq[genes, n_levels - 1 : n_levels]
        return {"quantiles_gq": quantiles_gq, "references_q": references_q}
