"""Pure tensor kernels behind the transforms: no state, no options object, inputs never mutated.

Each kernel states its formula and the scanpy / scikit-learn function whose semantics it matches.
They run on whatever device their inputs live on and compute in float32 (statistics arrive as
float32 buffers that were accumulated in float64).
"""

from __future__ import annotations

import numpy as np
import torch

from enhanced_dm.csr import (
    flat_positions_of_stored_values,
    remember_dense_origin,
    repeat_per_stored_value,
)

__all__ = [
    "densify",
    "gather_group_rows",
    "log1p",
    "map_stored_values",
    "normalize_total",
    "standardize",
    "total_count_factors",
]


def densify(x_ng: torch.Tensor, background_g: torch.Tensor | None = None) -> torch.Tensor:
    """Dense form of a (possibly sparse) matrix, keeping its dtype; dense input is returned as is.

    CSR is copied by flat position (``index_copy_``) into zeros, or into rows of ``background_g``
    (the value every unstored entry of a column takes): on CUDA several times faster than
    ``Tensor.to_dense()`` for integer CSR, on CPU about 5x (``benchmarks/results/device_*.json``).
    Inside a pipeline call the result remembers its CSR origin, so a monitor summarizes it from
    the stored values and the background row (:func:`~enhanced_dm.csr.dense_origin`).
    """
    if x_ng.layout == torch.strided:
        return x_ng
    if x_ng.layout != torch.sparse_csr:
        return x_ng.to_dense()
    if background_g is None:
        dense = torch.zeros(x_ng.shape, dtype=x_ng.dtype, device=x_ng.device)
    else:
        # empty + copy_ of the broadcast row: 2-3x faster on CPU than expand().clone()
        dense = torch.empty(x_ng.shape, dtype=x_ng.dtype, device=x_ng.device)
        dense.copy_(background_g.to(x_ng.dtype).expand(x_ng.shape))
    dense.view(-1).index_copy_(0, flat_positions_of_stored_values(x_ng), x_ng.values())
    remember_dense_origin(dense, x_ng, background_g)
    return dense


def map_stored_values(x_ng: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """A sparse CSR matrix with the sparsity pattern of ``x_ng`` and new stored ``values``.

    Per-cell steps that map zero to zero (scaling, log1p) run on the stored values only: about a
    tenth of the work of the dense matrix for single-cell data.
    """
    return torch.sparse_csr_tensor(
        x_ng.crow_indices(), x_ng.col_indices(), values, size=x_ng.shape, check_invariants=False
    )


def normalize_total(
    x_ng: torch.Tensor, total_counts_n: torch.Tensor, target_sum: float | torch.Tensor
) -> torch.Tensor:
    r"""Scale each cell to ``target_sum`` counts.

    .. math:: y_{cg} = x_{cg} \cdot \frac{\text{target\_sum}}{t_c}, \qquad y_{c\cdot} = 0 \text{ if } t_c = 0

    Matches ``scanpy.pp.normalize_total``: cells with zero total stay zero (never NaN). ``t_c`` is
    the cell's library size (``total_counts_n``), so a gene subset keeps the whole-file scale.
    """
    scale_n = total_count_factors(total_counts_n, target_sum)
    if x_ng.layout == torch.sparse_csr:
        values = x_ng.values().to(torch.float32) * repeat_per_stored_value(x_ng, scale_n)
        return map_stored_values(x_ng, values)
    return x_ng.to(torch.float32) * scale_n.unsqueeze(-1)


def total_count_factors(
    total_counts_n: torch.Tensor, target_sum: float | torch.Tensor
) -> torch.Tensor:
    r"""Each cell's factor :math:`\text{target\_sum} / t_c` in float32, 0 where :math:`t_c = 0`
    (:func:`normalize_total` multiplies by it; the fused fitting pass too)."""
    total = total_counts_n.to(torch.float32)
    return torch.where(
        total > 0, target_sum / total.clamp_min(torch.finfo(torch.float32).tiny), 0.0
    )


def log1p(x_ng: torch.Tensor) -> torch.Tensor:
    r"""Natural log of one plus the value: :math:`y = \ln(1 + x)` (``scanpy.pp.log1p``, base e).

    Sparse input stays sparse (log1p maps 0 to 0). On the CPU numpy computes it, as scanpy does
    (the same float32 kernel, so the same bits as scanpy): on the calling thread, where torch's
    two-thread kernel waits 3-10x longer for a core a neighbouring process keeps busy.
    """
    if x_ng.layout == torch.sparse_csr:
        return map_stored_values(x_ng, _log1p_float32(x_ng.values()))
    return _log1p_float32(x_ng)


def _log1p_float32(values: torch.Tensor) -> torch.Tensor:
    values = values.to(torch.float32)
    if values.device.type != "cpu" or values.requires_grad:
        return torch.log1p(values)
    return torch.from_numpy(np.log1p(values.numpy()))


def gather_group_rows(
    per_group_bg: torch.Tensor,
    global_g: torch.Tensor,
    group_n: torch.Tensor,
    fitted_b: torch.Tensor,
) -> torch.Tensor:
    """Row ``group_n[c]`` of ``per_group_bg`` for every cell, or ``global_g`` where that group was
    not fitted (no train cells, or a missing code ``-1``)."""
    n_groups = per_group_bg.shape[0]
    valid_n = (group_n >= 0) & (group_n < n_groups)
    safe_n = torch.where(valid_n, group_n, torch.zeros_like(group_n))
    use_group_n = valid_n & fitted_b[safe_n]
    return torch.where(use_group_n.unsqueeze(-1), per_group_bg[safe_n], global_g.unsqueeze(0))


def standardize(
    x_ng: torch.Tensor,
    center_g: torch.Tensor,
    scale_g: torch.Tensor,
    max_value: float | None = None,
) -> torch.Tensor:
    r"""Centre and scale each gene, then optionally clip; the result is dense.

    .. math:: y_{cg} = \operatorname{clip}\!\left(\frac{x_{cg} - \mu_g}{\sigma_g}, -m, m\right)

    ``center_g`` / ``scale_g`` may also be per cell (shape ``n x g``) for grouped statistics. Scales
    must already be positive (fitting replaces a zero scale by 1, as ``scanpy.pp.scale`` does);
    a non-positive scale is rejected rather than turned into inf. ``max_value`` clips to
    ``[-max_value, max_value]`` like ``scanpy.pp.scale(max_value=...)`` with ``zero_center=True``.

    A sparse CSR ``x_ng`` with per-gene statistics is standardized in one dense write: every row
    starts as the zeros' value :math:`(0 - \mu_g) / \sigma_g` and the stored values are computed
    and scattered into it (the same float32 operations as the dense path, so the same bits).
    """
    if x_ng.layout == torch.sparse_csr and center_g.dim() == 1 and scale_g.dim() == 1:
        zeros_g = (torch.zeros((), device=center_g.device) - center_g) / scale_g
        columns = x_ng.col_indices()  # int32 or int64: index_select takes both
        stored = x_ng.values().to(torch.float32) - center_g.index_select(0, columns)
        stored.div_(scale_g.index_select(0, columns))  # in place on the fresh difference
        if max_value is not None:
            zeros_g = zeros_g.clamp(-max_value, max_value)
            stored.clamp_(-max_value, max_value)
        return densify(map_stored_values(x_ng, stored), background_g=zeros_g)
    y = (densify(x_ng).to(torch.float32) - center_g) / scale_g
    if max_value is not None:
        y = y.clamp(-max_value, max_value)
    return y
