"""Exact, DDP-summable sufficient statistics for linear models and PCA (float64 sums and Gram
matrices), and the solvers that turn them into coefficients and components."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch
from torchmetrics import Metric

from enhanced_dm.errors import FittingError
from enhanced_dm.transforms.functional import densify

__all__ = [
    "GramMetric",
    "LeastSquaresFit",
    "LinearModelMetric",
    "PrincipalComponents",
    "gram_components",
    "principal_components",
    "solve_least_squares",
]


def _dense64(values: torch.Tensor) -> torch.Tensor:
    return densify(values).to(torch.float64)


class LinearModelMetric(Metric):
    r"""Sums for per-gene least squares of ``batch[key]`` (n x g) on a shared design (n x p).

    States (float64, ``dist_reduce_fx="sum"``): cell count, design sums :math:`\sum d`, response
    sums :math:`\sum y`, :math:`D^\top D`, :math:`D^\top Y` and :math:`\sum y^2` per gene: all an
    ordinary least squares fit with an intercept needs, merged over ranks by addition.
    ``design(batch)`` returns the design without its intercept column.
    """

    full_state_update = False
    higher_is_better = None
    is_differentiable = False
    count: torch.Tensor
    sum_p: torch.Tensor
    sum_g: torch.Tensor
    dtd_pp: torch.Tensor
    dty_pg: torch.Tensor
    yty_g: torch.Tensor

    def __init__(
        self,
        n_design: int,
        n_genes: int,
        design: Callable[[Mapping[str, torch.Tensor]], torch.Tensor],
        key: str = "x_ng",
    ) -> None:
        super().__init__()
        self.design = design
        self.key = key
        f64 = torch.float64
        self.add_state("count", torch.zeros((), dtype=f64), dist_reduce_fx="sum")
        self.add_state("sum_p", torch.zeros(n_design, dtype=f64), dist_reduce_fx="sum")
        self.add_state("sum_g", torch.zeros(n_genes, dtype=f64), dist_reduce_fx="sum")
        self.add_state("dtd_pp", torch.zeros(n_design, n_design, dtype=f64), dist_reduce_fx="sum")
        self.add_state("dty_pg", torch.zeros(n_design, n_genes, dtype=f64), dist_reduce_fx="sum")
        self.add_state("yty_g", torch.zeros(n_genes, dtype=f64), dist_reduce_fx="sum")

    def update(self, batch: Mapping[str, torch.Tensor]) -> None:
        d_np = self.design(batch).to(torch.float64)
        y_ng = _dense64(batch[self.key])
        self.count += y_ng.shape[0]
        self.sum_p += d_np.sum(0)
        self.sum_g += y_ng.sum(0)
        self.dtd_pp += d_np.T @ d_np
        self.dty_pg += d_np.T @ y_ng
        self.yty_g += (y_ng * y_ng).sum(0)

    def compute(self) -> dict[str, torch.Tensor]:
        names = ("count", "sum_p", "sum_g", "dtd_pp", "dty_pg", "yty_g")
        return {name: getattr(self, name).clone() for name in names}


class GramMetric(Metric):
    """Count, sums and Gram matrix (float64) of chosen columns of one or several batch keys,
    concatenated in the order given: ``columns = {"covariates_nc": idx, "x_ng": idx}``."""

    full_state_update = False
    higher_is_better = None
    is_differentiable = False
    count: torch.Tensor
    sum_f: torch.Tensor
    gram_ff: torch.Tensor

    def __init__(self, columns: Mapping[str, torch.Tensor]) -> None:
        super().__init__()
        self.columns = {key: index.clone() for key, index in columns.items()}
        width = sum(int(index.numel()) for index in self.columns.values())
        f64 = torch.float64
        self.add_state("count", torch.zeros((), dtype=f64), dist_reduce_fx="sum")
        self.add_state("sum_f", torch.zeros(width, dtype=f64), dist_reduce_fx="sum")
        self.add_state("gram_ff", torch.zeros(width, width, dtype=f64), dist_reduce_fx="sum")

    def update(self, batch: Mapping[str, torch.Tensor]) -> None:
        parts = [
            _dense64(batch[key])[:, index.to(batch[key].device)]
            for key, index in self.columns.items()
        ]
        x_nf = torch.cat(parts, dim=1)
        self.count += x_nf.shape[0]
        self.sum_f += x_nf.sum(0)
        self.gram_ff += x_nf.T @ x_nf

    def compute(self) -> dict[str, torch.Tensor]:
        return {
            "count": self.count.clone(),
            "sum_f": self.sum_f.clone(),
            "gram_ff": self.gram_ff.clone(),
        }


@dataclass(frozen=True)
class LeastSquaresFit:
    """Per gene: ``y ~ mean_g + (d - mean_p) @ coef_pg``; ``kept_p`` marks the design columns
    used (constant ones are dropped, their coefficients 0); ``r2_g`` the coefficient of
    determination on the fitted cells (0 for a constant gene)."""

    mean_p: torch.Tensor
    mean_g: torch.Tensor
    coef_pg: torch.Tensor
    kept_p: torch.Tensor
    r2_g: torch.Tensor


CONSTANT_TOLERANCE = 1e-10
"""A design column whose centred sum of squares is at most this fraction of its raw one is
constant on the fitted cells."""


def solve_least_squares(stats: Mapping[str, torch.Tensor], names: Sequence[str]) -> LeastSquaresFit:
    """Ordinary least squares with an intercept from :class:`LinearModelMetric` sums, in the
    centred form (better conditioned than the raw normal equations).

    Design columns constant on the fitted cells are dropped (``kept_p``); a design still
    singular after that is a :class:`~enhanced_dm.errors.FittingError` naming ``names``.
    """
    n = float(stats["count"])
    if n < 2:
        raise FittingError(f"regression on {list(names)}: fewer than two train cells")
    mean_p = stats["sum_p"] / n
    mean_g = stats["sum_g"] / n
    scatter_pp = stats["dtd_pp"] - n * torch.outer(mean_p, mean_p)
    cross_pg = stats["dty_pg"] - n * torch.outer(mean_p, mean_g)
    raw = torch.diagonal(stats["dtd_pp"]).clamp_min(torch.finfo(torch.float64).tiny)
    kept_p = torch.diagonal(scatter_pp) > CONSTANT_TOLERANCE * raw
    coef_pg = torch.zeros_like(cross_pg)
    kept = torch.nonzero(kept_p).flatten()
    if len(kept):
        scatter = scatter_pp[kept][:, kept]
        scale = torch.sqrt(torch.diagonal(scatter))
        correlation = scatter / torch.outer(scale, scale)
        smallest = float(torch.linalg.eigvalsh(correlation)[0])
        if smallest < 1e-10:
            kept_names = [names[int(i)] for i in kept]
            raise FittingError(
                f"regression on {kept_names}: the design is singular on the train split "
                f"(covariates are linear combinations of each other; smallest eigenvalue of "
                f"their correlation {smallest:.2e}); drop one of them"
            )
        coef_pg[kept] = torch.linalg.solve(scatter, cross_pg[kept])
    total_g = stats["yty_g"] - n * mean_g * mean_g
    explained_g = (coef_pg * cross_pg).sum(0)
    r2_g = torch.where(total_g > 0, explained_g / total_g.clamp_min(1e-300), 0.0)
    return LeastSquaresFit(mean_p, mean_g, coef_pg, kept_p, r2_g.clamp(0.0, 1.0))


@dataclass(frozen=True)
class PrincipalComponents:
    """The leading components of a covariance: ``components_fk`` (unit columns, the largest
    absolute loading of each positive), ``variance_k`` (eigenvalues, ddof=1), the total variance
    (trace) and the mean; ``k`` may be smaller than asked (numerical rank, cells, features)."""

    mean_f: torch.Tensor
    components_fk: torch.Tensor
    variance_k: torch.Tensor
    total_variance: float


def gram_components(result: Mapping[str, torch.Tensor], k: int, what: str) -> PrincipalComponents:
    """:func:`principal_components` of a :class:`GramMetric` result; when fewer than ``k`` are
    usable, one warning naming ``what`` says that its last columns stay 0."""
    pca = principal_components(float(result["count"]), result["sum_f"], result["gram_ff"], k)
    found = pca.components_fk.shape[1]
    if found < k:
        warnings.warn(
            f"{what}: {found} usable principal components of the {k} asked (the rank of the "
            "train cells' values); the rest of its columns are 0",
            stacklevel=3,
        )
    return pca


def principal_components(
    count: float, sum_f: torch.Tensor, gram_ff: torch.Tensor, k: int
) -> PrincipalComponents:
    """Exact PCA of the rows summarized by (count, sums, Gram): the eigenvectors of the
    covariance (ddof=1, as scikit-learn's ``PCA``), at most ``k``, dropping eigenvalues below
    ``1e-12`` of the largest (a rank below ``k`` leaves fewer components)."""
    mean_f = sum_f / count
    covariance = (gram_ff - count * torch.outer(mean_f, mean_f)) / max(count - 1.0, 1.0)
    covariance = (covariance + covariance.T) / 2
    values, vectors = torch.linalg.eigh(covariance)
    values, vectors = values.flip(0), vectors.flip(1)
    largest = float(values[0]) if len(values) else 0.0
    usable = int((values > max(largest, 0.0) * 1e-12).sum()) if largest > 0 else 0
    k = min(k, usable, max(int(count) - 1, 0))
    components = vectors[:, :k]
    if k:
        pivot = components.abs().argmax(0)
        signs = torch.sign(components[pivot, torch.arange(k)])
        components = components * torch.where(signs == 0, 1.0, signs)
    return PrincipalComponents(
        mean_f, components, values[:k].clone(), float(torch.diagonal(covariance).sum())
    )
