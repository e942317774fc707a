"""Highly variable genes with the semantics of ``scanpy.pp.highly_variable_genes(flavor="seurat")``,
from per-gene sums that a fitting pass accumulates (exact, DDP-summable)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from torchmetrics import Metric

from enhanced_dm.transforms.functional import densify

__all__ = ["SeuratDispersions", "SeuratMomentsMetric", "seurat_dispersions"]

N_BINS = 20
"""scanpy's default ``n_bins``: expressed genes are binned by mean into this many equal-width bins."""


class SeuratMomentsMetric(Metric):
    """Per gene, float64 sums of ``expm1(x)`` and its square (what the seurat flavour ranks by)
    and of ``x`` and its square (to z-score the selected genes), for ``x = batch[key]`` the
    log-normalized expression. ``expm1`` is taken in float32, as scanpy takes it on float32 data."""

    full_state_update = False
    higher_is_better = None
    is_differentiable = False
    count: torch.Tensor
    sum_g: torch.Tensor
    sumsq_g: torch.Tensor
    log_sum_g: torch.Tensor
    log_sumsq_g: torch.Tensor

    def __init__(self, n_genes: int, key: str = "x_log_ng") -> None:
        super().__init__()
        self.key = key
        f64 = torch.float64
        self.add_state("count", torch.zeros((), dtype=f64), dist_reduce_fx="sum")
        for name in ("sum_g", "sumsq_g", "log_sum_g", "log_sumsq_g"):
            self.add_state(name, torch.zeros(n_genes, dtype=f64), dist_reduce_fx="sum")

    def update(self, batch: Mapping[str, torch.Tensor]) -> None:
        x_ng = densify(batch[self.key]).to(torch.float32)
        linear = torch.expm1(x_ng).to(torch.float64)
        log = x_ng.to(torch.float64)
        self.count += x_ng.shape[0]
        self.sum_g += linear.sum(0)
        self.sumsq_g += (linear * linear).sum(0)
        self.log_sum_g += log.sum(0)
        self.log_sumsq_g += (log * log).sum(0)

    def compute(self) -> dict[str, torch.Tensor]:
        names = ("count", "sum_g", "sumsq_g", "log_sum_g", "log_sumsq_g")
        return {name: getattr(self, name).clone() for name in names}


@dataclass(frozen=True)
class SeuratDispersions:
    """Per gene: ``means`` (log1p of the mean of ``expm1(x)``), ``dispersions`` (log of
    variance / mean), ``dispersions_norm`` (z-scored within the gene's mean bin; NaN for a gene
    without variance), as scanpy's ``adata.var`` columns of the same names."""

    means: np.ndarray
    dispersions: np.ndarray
    dispersions_norm: np.ndarray

    def ranking(self) -> np.ndarray:
        """Gene indices from the most to the least variable (normalized dispersion descending;
        NaN last; ties in gene order)."""
        key = np.nan_to_num(self.dispersions_norm, nan=-np.inf)
        return np.argsort(-key, kind="stable")

    def top(self, n: int) -> np.ndarray:
        """The ``n`` most variable genes, in gene order (scanpy's mask ``highly_variable``).

        scanpy keeps every gene tied with the n-th at the cut-off; a fixed width keeps the first
        of them in gene order (the only difference, and only on exact ties).
        """
        return np.sort(self.ranking()[:n])


def seurat_dispersions(
    count: float, sum_g: np.ndarray, sumsq_g: np.ndarray, n_bins: int = N_BINS
) -> SeuratDispersions:
    """scanpy's seurat-flavour dispersions from the sums of ``expm1(x)`` over ``count`` cells.

    As scanpy without ``batch_key``: every gene is binned (a zero mean counts as 1e-12), a zero
    dispersion is NaN (never selected); means and variances (ddof=1) are float64.
    """
    n = float(count)
    mean = np.asarray(sum_g, dtype=np.float64) / n
    var = (np.asarray(sumsq_g, dtype=np.float64) - n * mean * mean) / max(n - 1.0, 1.0)
    mean[mean == 0] = 1e-12
    dispersion = np.clip(var, 0.0, None) / mean
    dispersion[dispersion == 0] = np.nan
    frame = pd.DataFrame({"means": np.log1p(mean), "dispersions": np.log(dispersion)})
    frame["mean_bin"] = pd.cut(frame["means"], bins=n_bins)
    stats = frame.groupby("mean_bin", observed=True)["dispersions"].agg(avg="mean", dev="std")
    single = stats["dev"].isnull()
    # A bin with one gene: scanpy sets its normalized dispersion to 1 (dev = avg, avg = 0).
    stats.loc[single, "dev"] = stats.loc[single, "avg"]
    stats.loc[single, "avg"] = 0
    per_gene = stats.loc[frame["mean_bin"]].set_index(frame.index)
    norm = (frame["dispersions"] - per_gene["avg"]) / per_gene["dev"]
    return SeuratDispersions(
        frame["means"].to_numpy(), frame["dispersions"].to_numpy(), norm.to_numpy()
    )
