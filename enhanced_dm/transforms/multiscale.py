"""The three scales of a cell: molecular (highly variable genes), pathway (pathway scores) and
cellular (principal components), each standardized on its own with train statistics."""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from enhanced_dm.fitting.hvg import SeuratMomentsMetric, seurat_dispersions
from enhanced_dm.fitting.linear import GramMetric, gram_components
from enhanced_dm.fitting.moments import moments_to_mean_std
from enhanced_dm.transforms import functional as F
from enhanced_dm.transforms.base import Batch, FittableTransform, Transform

if TYPE_CHECKING:
    from enhanced_dm.transforms.context import StepContext

__all__ = ["CellularScale", "MolecularScale", "PathwayScale"]


class MolecularScale(FittableTransform):
    """``x_molecular_nd``: the ``width`` most highly variable genes of ``x_log_ng``, z-scored
    (train mean and std, ddof=1, as ``scanpy.pp.scale``), in gene order.

    The genes are chosen on the train split as ``scanpy.pp.highly_variable_genes(flavor="seurat",
    n_top_genes=width)`` chooses them on log-normalized data (:mod:`~enhanced_dm.fitting.hvg`);
    the ``cellular_hvg`` most variable genes (:attr:`cellular_genes`) are chosen in the same pass
    for :class:`CellularScale`.
    """

    reads_counts = False
    reads_log_expression = True
    output_key = "x_molecular_nd"
    genes_m: torch.Tensor
    mean_m: torch.Tensor
    std_m: torch.Tensor
    cellular_genes_c: torch.Tensor
    dispersions_norm_g: torch.Tensor

    def __init__(self, n_genes: int, width: int, cellular_hvg: int) -> None:
        super().__init__()
        self.n_genes = int(n_genes)
        m, c = min(int(width), self.n_genes), min(int(cellular_hvg), self.n_genes)
        f64 = torch.float64
        self.register_buffer("genes_m", torch.arange(m))
        self.register_buffer("mean_m", torch.zeros(m, dtype=f64))
        self.register_buffer("std_m", torch.ones(m, dtype=f64))
        self.register_buffer("cellular_genes_c", torch.arange(c))
        self.register_buffer("dispersions_norm_g", torch.zeros(self.n_genes, dtype=f64))

    def config(self) -> dict[str, Any]:
        return {
            "width": int(self.genes_m.numel()),
            "cellular_hvg": int(self.cellular_genes_c.numel()),
        }

    def fit_metric(self) -> SeuratMomentsMetric:
        return SeuratMomentsMetric(self.n_genes)

    def load_fitted(self, result: Mapping[str, torch.Tensor]) -> None:
        count = float(result["count"])
        dispersions = seurat_dispersions(
            count, result["sum_g"].cpu().numpy(), result["sumsq_g"].cpu().numpy()
        )
        device = self.mean_m.device
        genes = torch.from_numpy(dispersions.top(int(self.genes_m.numel()))).to(device)
        mean_g, std_g = moments_to_mean_std(
            result["count"], result["log_sum_g"], result["log_sumsq_g"]
        )
        self.genes_m = genes
        self.mean_m = mean_g.to(device)[genes]
        self.std_m = std_g.to(device)[genes]
        top_c = dispersions.top(int(self.cellular_genes_c.numel()))
        self.cellular_genes_c = torch.from_numpy(top_c).to(device)
        self.dispersions_norm_g = torch.from_numpy(
            np.nan_to_num(dispersions.dispersions_norm, nan=-np.inf)
        ).to(device)
        self.fitted = True

    def forward(
        self, batch: Mapping[str, torch.Tensor], context: StepContext | None = None
    ) -> Batch:
        x_ng = F.densify(batch["x_log_ng"])
        f32 = torch.float32
        selected = x_ng[:, self.genes_m].to(f32)
        return {"x_molecular_nd": (selected - self.mean_m.to(f32)) / self.std_m.to(f32)}

    def __repr__(self) -> str:
        return f"MolecularScale(width={self.genes_m.numel()}, cellular_hvg={self.cellular_genes_c.numel()})"


class PathwayScale(Transform):
    """``x_pathway_nd``: the first ``width`` columns of ``pathway_scores_np`` (already
    standardized with train statistics by the pathway step); fewer when fewer pathways are kept
    (one warning)."""

    reads_counts = False
    output_key = "x_pathway_nd"

    def __init__(self, width: int) -> None:
        super().__init__()
        self.width = int(width)
        self._warned = False

    def forward(
        self, batch: Mapping[str, torch.Tensor], context: StepContext | None = None
    ) -> Batch:
        scores = batch["pathway_scores_np"]
        if scores.shape[1] < self.width and not self._warned:
            warnings.warn(
                f"pathway_scale_dim={self.width}, but {scores.shape[1]} pathways are kept; "
                f"x_pathway_nd has {scores.shape[1]} columns",
                stacklevel=2,
            )
            self._warned = True
        return {"x_pathway_nd": scores[:, : self.width]}

    def __repr__(self) -> str:
        return f"PathwayScale(width={self.width})"


class CellularScale(FittableTransform):
    """``x_cellular_nd``: the leading principal components of ``x_log_ng`` over the genes
    :class:`MolecularScale` chose for it, each divided by its train standard deviation.

    Fitted from one :class:`~enhanced_dm.fitting.linear.GramMetric` pass (exact float64 sums
    and Gram matrix, DDP-summable; covariance ddof=1; signs: the largest loading positive).
    Components beyond the data's rank leave zero columns (one warning).
    """

    reads_counts = False
    reads_log_expression = True
    output_key = "x_cellular_nd"
    genes_c: torch.Tensor
    mean_c: torch.Tensor
    loadings_cd: torch.Tensor
    variance_d: torch.Tensor
    total_variance: torch.Tensor

    def __init__(self, width: int, genes_from: MolecularScale) -> None:
        super().__init__()
        self._genes_from = [genes_from]  # a list: not a submodule (its buffers are its own)
        c = int(genes_from.cellular_genes_c.numel())
        self.width = min(int(width), c)
        f64 = torch.float64
        self.register_buffer("genes_c", torch.arange(c))
        self.register_buffer("mean_c", torch.zeros(c, dtype=f64))
        self.register_buffer("loadings_cd", torch.zeros(c, self.width, dtype=f64))
        self.register_buffer("variance_d", torch.zeros(self.width, dtype=f64))
        self.register_buffer("total_variance", torch.zeros((), dtype=f64))

    def config(self) -> dict[str, Any]:
        return {"width": self.width, "genes": int(self.genes_c.numel())}

    def fit_metric(self) -> GramMetric:
        self.genes_c = self._genes_from[0].cellular_genes_c.clone()
        return GramMetric({"x_log_ng": self.genes_c})

    def load_fitted(self, result: Mapping[str, torch.Tensor]) -> None:
        pca = gram_components(result, self.width, "x_cellular_nd")
        found = pca.components_fk.shape[1]
        device = self.mean_c.device
        loadings = torch.zeros_like(self.loadings_cd)
        loadings[:, :found] = pca.components_fk * pca.variance_k.rsqrt()
        variance = torch.zeros_like(self.variance_d)
        variance[:found] = pca.variance_k
        self.mean_c = pca.mean_f.to(device)
        self.loadings_cd = loadings.to(device)
        self.variance_d = variance.to(device)
        self.total_variance = torch.tensor(pca.total_variance, dtype=torch.float64, device=device)
        self.fitted = True

    def forward(
        self, batch: Mapping[str, torch.Tensor], context: StepContext | None = None
    ) -> Batch:
        x_ng = F.densify(batch["x_log_ng"])
        f32 = torch.float32
        centred = x_ng[:, self.genes_c].to(f32) - self.mean_c.to(f32)
        return {"x_cellular_nd": centred @ self.loadings_cd.to(f32)}

    def explained_variance_ratio(self) -> list[float]:
        total = float(self.total_variance)
        return (self.variance_d / total).tolist() if total > 0 else [0.0] * self.width

    def __repr__(self) -> str:
        return f"CellularScale(width={self.width}, genes={self.genes_c.numel()})"
