"""Regress covariates out of the expression: ``scanpy.pp.regress_out``, fitted once on the train
split from exact sums, applied per batch on the device."""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch

from enhanced_dm.fitting.linear import LinearModelMetric, solve_least_squares
from enhanced_dm.transforms.base import Batch, FittableTransform

if TYPE_CHECKING:
    from enhanced_dm.transforms.context import StepContext

__all__ = ["RegressOut"]


class RegressOut(FittableTransform):
    r"""Per gene, the residual of ordinary least squares of ``x_ng`` on an intercept plus
    covariates: :math:`x_{cg} - \bar y_g - (d_c - \bar d)^\top \beta_g`.

    The design holds the ``numeric`` columns of ``covariates_nc`` (index into its columns) and,
    for each ``categorical`` batch key (``(key, levels)``), one indicator column per level but
    the first (one-hot, dropping one level; a cell without a label, code -1, counts as the
    first level). :math:`\beta` is fitted on the train split from :class:`~enhanced_dm.fitting.
    linear.LinearModelMetric` sums (float64, merged over DDP ranks), so every split and rank is
    corrected with the same coefficients. This is ``scanpy.pp.regress_out``'s model: numeric
    keys are its regressors with a column of ones; a single categorical key gives its residuals
    from the per-category means. Differences: scanpy refits on whatever cells it is given, and
    for a categorical key returns a gene constant over all cells unchanged (here: centred to 0,
    as its numeric path does). Design columns constant on the train split are dropped with a
    warning (``dropped``); a singular design is a :class:`~enhanced_dm.errors.FittingError`.
    """

    accepts_sparse = False
    reads_counts = False
    mean_p: torch.Tensor
    mean_g: torch.Tensor
    coef_pg: torch.Tensor
    kept_p: torch.Tensor
    r2_g: torch.Tensor

    def __init__(
        self,
        n_genes: int,
        numeric: Sequence[tuple[str, int]] = (),
        categorical: Sequence[tuple[str, str, Sequence[str]]] = (),
        covariates_key: str = "covariates_nc",
    ) -> None:
        """``numeric``: (name, column of ``covariates_key``); ``categorical``: (name, batch key,
        level names)."""
        super().__init__()
        self.numeric = [(str(name), int(column)) for name, column in numeric]
        self.categorical = [(str(name), key, list(levels)) for name, key, levels in categorical]
        self.covariates_key = covariates_key
        self.design_names = [name for name, _ in self.numeric] + [
            f"{name}={level}" for name, _, levels in self.categorical for level in levels[1:]
        ]
        p = len(self.design_names)
        f64 = torch.float64
        self.register_buffer("mean_p", torch.zeros(p, dtype=f64))
        self.register_buffer("mean_g", torch.zeros(n_genes, dtype=f64))
        self.register_buffer("coef_pg", torch.zeros(p, n_genes, dtype=f64))
        self.register_buffer("kept_p", torch.zeros(p, dtype=torch.bool))
        self.register_buffer("r2_g", torch.zeros(n_genes, dtype=f64))

    @property
    def n_genes(self) -> int:
        return int(self.mean_g.shape[0])

    def config(self) -> dict[str, Any]:
        return {"numeric": self.numeric, "categorical": self.categorical}

    def design(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """The design without its intercept (n x p, float32, on the batch's device)."""
        reference = batch["cell_index_n"]
        parts = []
        if self.numeric:
            columns = torch.tensor([column for _, column in self.numeric], device=reference.device)
            parts.append(batch[self.covariates_key][:, columns].to(torch.float32))
        for _, key, levels in self.categorical:
            codes = batch[key].long()
            levels_l = torch.arange(1, len(levels), device=codes.device)
            parts.append((codes[:, None] == levels_l).to(torch.float32))
        if not parts:
            return torch.zeros(reference.shape[0], 0, device=reference.device)
        return torch.cat(parts, dim=1)

    def fit_metric(self) -> LinearModelMetric:
        return LinearModelMetric(len(self.design_names), self.n_genes, self.design)

    def load_fitted(self, result: Mapping[str, torch.Tensor]) -> None:
        p, g = len(self.design_names), self.n_genes
        # torchmetrics squeezes one-element results: restore the shapes
        shapes = {"sum_p": (p,), "sum_g": (g,), "dtd_pp": (p, p), "dty_pg": (p, g), "yty_g": (g,)}
        sums = {key: result[key].reshape(shapes.get(key, ())) for key in result}
        fit = solve_least_squares(sums, self.design_names)
        device = self.mean_g.device
        self.mean_p = fit.mean_p.to(device)
        self.mean_g = fit.mean_g.to(device)
        self.coef_pg = fit.coef_pg.to(device)
        self.kept_p = fit.kept_p.to(device)
        self.r2_g = fit.r2_g.to(device)
        self.fitted = True
        dropped = self.dropped
        if dropped:
            warnings.warn(
                f"regress_out: {dropped} constant on the train split (e.g. pct_mito on data "
                "without mitochondrial genes); left out of the regression",
                stacklevel=2,
            )

    @property
    def dropped(self) -> list[str]:
        """Design columns left out as constant on the train split."""
        return [
            name
            for name, kept in zip(self.design_names, self.kept_p.tolist(), strict=True)
            if not kept
        ]

    def forward(
        self, batch: Mapping[str, torch.Tensor], context: StepContext | None = None
    ) -> Batch:
        x_ng = batch["x_ng"]
        centred = self.design(batch) - self.mean_p.to(torch.float32)
        fitted_ng = self.mean_g.to(x_ng.dtype) + centred @ self.coef_pg.to(x_ng.dtype)
        return {"x_ng": x_ng - fitted_ng}

    def __repr__(self) -> str:
        return f"RegressOut({self.design_names})"
