"""Pure kernels of the rank-based and count-based normalizations: quantile mapping, Pearson residuals.

Like :mod:`enhanced_dm.transforms.functional`: no state, inputs never mutated, the device of the
inputs, float32 arithmetic. Each kernel states its formula and the scikit-learn / scanpy function
whose semantics it matches.
"""

from __future__ import annotations

from typing import Literal

import torch

from enhanced_dm.errors import DataFileError

__all__ = [
    "BOUNDS_THRESHOLD",
    "NORMAL_CLIP",
    "OutputDistribution",
    "pearson_residuals",
    "quantile_map",
    "quantile_references",
    "require_counts",
]

OutputDistribution = Literal["normal", "uniform"]

_MAP_CHUNK_ELEMENTS = 1 << 22

BOUNDS_THRESHOLD = 1e-7
"""scikit-learn's ``BOUNDS_THRESHOLD``: values this close to the fitted range's ends go to the ends."""

NORMAL_CLIP = float(
    -torch.special.ndtri(
        torch.tensor(BOUNDS_THRESHOLD - 2.220446049250313e-16, dtype=torch.float64)
    )
)
"""``-norm.ppf(1e-7 - eps)`` (about 5.1993): scikit-learn clips the normal output to ``±NORMAL_CLIP``."""


def quantile_references(n_quantiles: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """``np.linspace(0, 1, n_quantiles)`` (at least two points), the levels of the fitted quantiles."""
    return torch.linspace(0.0, 1.0, max(2, n_quantiles), dtype=dtype)


def _segment_levels(
    x_gn: torch.Tensor,
    quantiles_gq: torch.Tensor,
    references_q: torch.Tensor,
    complements_q: torch.Tensor,
    lower_q: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Interpolate ``x`` on the segments starting at ``lower_q`` (shape ``g x n``).

    Returns the level ``p`` and its complement ``1 - p`` computed from the upper end, so that both
    tails keep float32 relative precision (the normal ppf multiplies errors near 0 and 1).
    """
    x0 = torch.gather(quantiles_gq, 1, lower_q)
    x1 = torch.gather(quantiles_gq, 1, lower_q + 1)
    width = x1 - x0
    safe_width = torch.where(width > 0, width, torch.ones_like(width))
    r0, r1, c1 = references_q[lower_q], references_q[lower_q + 1], complements_q[lower_q + 1]
    step = r1 - r0
    level = r0 + (x_gn - x0) / safe_width * step
    complement = c1 + (x1 - x_gn) / safe_width * step
    return level, complement


def quantile_map(
    x_ng: torch.Tensor,
    quantiles_gq: torch.Tensor,
    references_q: torch.Tensor,
    output_distribution: OutputDistribution = "normal",
) -> torch.Tensor:
    r"""Map each gene's values through its fitted quantiles to a uniform or standard normal.

    .. math::

        u_{cg} = \tfrac12\left[\operatorname{interp}_\uparrow(x_{cg}; q_g, r)
                 + \operatorname{interp}_\downarrow(x_{cg}; q_g, r)\right], \qquad
        y_{cg} = \operatorname{clip}\!\left(\Phi^{-1}(u_{cg}), -5.1993, 5.1993\right)

    :math:`q_g` are the fitted quantiles of gene :math:`g` at levels :math:`r` (``references_q``,
    ascending from 0 to 1, or the single level 0 as sklearn fits on one cell; trailing copies of
    the last quantile and level are allowed, as padding). This is
    ``sklearn.preprocessing.QuantileTransformer.transform``: interpolation from below and from
    above averaged (a value tied with several quantiles gets the middle of their levels), values
    within ``1e-7`` of the lowest (highest) quantile set to level 0 (1) for the normal output,
    exact ends for the uniform output, then ``norm.ppf`` and the clip. So, as in sklearn, every
    value at a gene's minimum (the zeros of a gene not detected in every cell) maps to -5.1993,
    and every value at its maximum to +5.1993 (the bounds are compared in float64). The level
    and its complement :math:`1 - u` are interpolated separately and :math:`\Phi^{-1}` is
    evaluated on the smaller one (``torch.special.ndtri``), so float32 keeps the tails sklearn
    computes in float64.
    """
    if output_distribution not in ("normal", "uniform"):
        raise ValueError(
            f"output_distribution must be 'normal' or 'uniform', got {output_distribution!r}"
        )
    x_ng = x_ng.to(torch.float32)
    quantiles_gq = quantiles_gq.to(device=x_ng.device, dtype=torch.float32)
    references_q = references_q.to(x_ng.device, torch.float64)
    complements_q = (1.0 - references_q).to(torch.float32)
    references_q = references_q.to(torch.float32)
    y_ng = torch.empty_like(x_ng)
    # About a dozen temporaries per value: gene chunks of ~4 M values bound them (~200 MB).
    width = max(1, _MAP_CHUNK_ELEMENTS // max(1, x_ng.shape[0]))
    for start in range(0, x_ng.shape[1], width):
        genes = slice(start, start + width)
        y_gn = _quantile_map_genes(
            x_ng[:, genes].t().contiguous(),
            quantiles_gq[genes].contiguous(),
            references_q,
            complements_q,
            output_distribution,
        )
        y_ng[:, genes] = y_gn.t()
    return y_ng


def _quantile_map_genes(
    x_gn: torch.Tensor,
    quantiles_gq: torch.Tensor,
    references_q: torch.Tensor,
    complements_q: torch.Tensor,
    output_distribution: OutputDistribution,
) -> torch.Tensor:
    """:func:`quantile_map` on genes x cells, levels and complements already float32."""
    n_levels = quantiles_gq.shape[1]
    first_g1, last_g1 = quantiles_gq[:, :1], quantiles_gq[:, -1:]

    # np.interp(x, q, r): the last segment whose left end is <= x.
    upper_q = torch.searchsorted(quantiles_gq, x_gn, right=True) - 1
    up_level, up_complement = _segment_levels(
        x_gn, quantiles_gq, references_q, complements_q, upper_q.clamp(0, n_levels - 2)
    )
    above_up, below_up = x_gn >= last_g1, x_gn < first_g1
    # -np.interp(-x, -q[::-1], -r[::-1]): the first segment whose right end is >= x.
    lower_q = torch.searchsorted(quantiles_gq, x_gn, right=False) - 1
    down_level, down_complement = _segment_levels(
        x_gn, quantiles_gq, references_q, complements_q, lower_q.clamp(0, n_levels - 2)
    )
    above_down, below_down = x_gn > last_g1, x_gn <= first_g1

    # Outside the fitted range np.interp returns the end levels (both 0 for a single quantile).
    first_level, last_level = references_q[0], references_q[-1]
    first_complement, last_complement = complements_q[0], complements_q[-1]
    up_level = torch.where(above_up, last_level, torch.where(below_up, first_level, up_level))
    up_complement = torch.where(
        above_up, last_complement, torch.where(below_up, first_complement, up_complement)
    )
    down_level = torch.where(
        above_down, last_level, torch.where(below_down, first_level, down_level)
    )
    down_complement = torch.where(
        above_down, last_complement, torch.where(below_down, first_complement, down_complement)
    )
    level = 0.5 * (up_level + down_level)
    complement = 0.5 * (up_complement + down_complement)

    one, zero = torch.ones_like(x_gn), torch.zeros_like(x_gn)

    if output_distribution == "normal":
        # sklearn's bound rule, in float64 as sklearn evaluates it: in float32, x + 1e-7 rounds
        # back to x for |x| >= 1, so values tied at a gene's maximum would miss the bound.
        x64_gn = x_gn.to(torch.float64)
        at_top = x64_gn + BOUNDS_THRESHOLD > last_g1.to(torch.float64)
        at_bottom = x64_gn - BOUNDS_THRESHOLD < first_g1.to(torch.float64)
    else:
        at_top, at_bottom = x_gn == last_g1, x_gn == first_g1
    level = torch.where(at_bottom, zero, torch.where(at_top, one, level))
    complement = torch.where(at_bottom, one, torch.where(at_top, zero, complement))

    if output_distribution == "uniform":
        return level
    return torch.where(
        level < 0.5, torch.special.ndtri(level), -torch.special.ndtri(complement)
    ).clamp(-NORMAL_CLIP, NORMAL_CLIP)


def require_counts(counts_ng: torch.Tensor, what: str, key: str = "counts_ng") -> None:
    """Raise :class:`~enhanced_dm.errors.DataFileError` unless ``counts_ng`` holds non-negative integers.

    Integer dtypes pass without a look at the values (the data layer only gives them to count
    data); floating values are checked (one device synchronization), and the message names the
    first offending value, its cell and gene, as scvi-tools' ``LayerField(is_count_data=True)``
    does (it warns; we refuse, because the result would be meaningless).
    """
    if not torch.is_floating_point(counts_ng):
        if bool((counts_ng < 0).any()):
            raise DataFileError(f"{what} needs non-negative counts in {key!r}; found negatives")
        return
    bad_ng = (counts_ng != torch.round(counts_ng)) | (counts_ng < 0) | ~torch.isfinite(counts_ng)
    if bool(bad_ng.any()):
        cell, gene = (int(i) for i in torch.nonzero(bad_ng)[0])
        value = float(counts_ng[cell, gene])
        raise DataFileError(
            f"{what} needs raw non-negative integer counts in {key!r}, but found {value!r} "
            f"(row {cell} of the batch, gene column {gene}): the data look normalized "
            "(FPKM/TPM/log). Pass raw UMI counts (e.g. layer='counts') or choose another "
            "normalization_type."
        )


def pearson_residuals(
    counts_ng: torch.Tensor,
    gene_fraction_g: torch.Tensor,
    theta: float,
    clip_n: torch.Tensor | float,
) -> torch.Tensor:
    r"""Analytic Pearson residuals of a negative binomial with fixed overdispersion (Lause et al. 2021).

    .. math::

        \mu_{cg} = n_c \, p_g, \quad n_c = \sum_g x_{cg}, \quad p_g = \frac{\sum_c x_{cg}}{\sum_{c,g} x_{cg}}, \qquad
        z_{cg} = \operatorname{clip}\!\left(\frac{x_{cg} - \mu_{cg}}{\sqrt{\mu_{cg} + \mu_{cg}^2 / \theta}}, -k, k\right)

    ``scanpy.experimental.pp.normalize_pearson_residuals(theta=θ, clip=k)``: :math:`n_c` is the
    cell's sum over the genes of the matrix (not the file's library size), as scanpy computes it.
    :math:`p_g` (``gene_fraction_g``, per gene or per cell x gene for grouped statistics) is
    fitted on the train split instead of on the matrix at hand. ``clip_n`` is a number or one
    bound per cell. Where :math:`\mu = 0` (a gene or cell without counts) the residual is 0 for a
    zero count and the clip bound otherwise, never NaN (scanpy gives NaN for all-zero genes).
    """
    x_ng = counts_ng.to(torch.float32)
    total_n1 = x_ng.sum(dim=1, keepdim=True)
    mu_ng = total_n1 * gene_fraction_g.to(torch.float32)
    variance_ng = mu_ng + mu_ng * mu_ng / theta
    tiny = torch.finfo(torch.float32).tiny
    z_ng = (x_ng - mu_ng) / variance_ng.clamp_min(tiny).sqrt()
    if isinstance(clip_n, torch.Tensor):
        bound_n1 = clip_n.to(torch.float32).reshape(-1, 1)
        return torch.maximum(torch.minimum(z_ng, bound_n1), -bound_n1)
    return z_ng.clamp(-clip_n, clip_n)
