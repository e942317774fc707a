"""Per-cell resource covariates (capture, mitochondrial and ribosomal load, allocation,
efficiency) and the ``resource_nd`` embedding (z-scored covariates + PCA of gene blocks)."""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch

from enhanced_dm.csr import rows_of_stored_values
from enhanced_dm.fitting.covariates import QUANTILE_LEVELS, CovariateTableMetric
from enhanced_dm.fitting.linear import GramMetric, principal_components
from enhanced_dm.transforms import functional as F
from enhanced_dm.transforms.base import Batch, FittableTransform

if TYPE_CHECKING:
    from enhanced_dm.transforms.context import StepContext

__all__ = [
    "ALLOCATION_CATEGORIES",
    "BUILTIN_COVARIATES",
    "ResourceCovariates",
    "ResourceEmbedding",
]

BUILTIN_COVARIATES = ("log_total_counts", "log_genes_detected", "pct_mito", "pct_ribo")
ALLOCATION_CATEGORIES = ("mitochondrial", "ribosomal", "energy", "nutrient", "other")


class ResourceCovariates(FittableTransform):
    r"""Per cell, from the counts: ``covariates_nc``, ``allocation_na`` and ``efficiency_n``.

    * ``covariates_nc`` columns (:attr:`names`): ``log_total_counts`` = :math:`\ln t_c`
      (``total_counts_n``: the library size over all genes of the file; 0 for an empty cell),
      ``log_genes_detected`` = :math:`\ln(1 + \#\{g: x_{cg} > 0\})`, ``pct_mito`` and
      ``pct_ribo`` = 100 x the counts of mitochondrial / ribosomal genes over the counts of the
      data's genes (``scanpy.pp.calculate_qc_metrics``'s ``pct_counts_*``; 0, not NaN, for a
      cell without counts), then the numeric obs columns ``obs_numeric`` (batch keys).
    * ``allocation_na``: the share of the data-gene counts in each of
      :data:`ALLOCATION_CATEGORIES` (``category_g``: each gene in exactly one; rows sum to 1, 0
      for an empty cell).
    * ``efficiency_n``: :math:`t_c` / the median positive library size of the train cells,
      clipped to ``efficiency_range``.

    Fitted (one pass, every train cell's covariates gathered): that median, and per column the
    mean, std and quantiles reported by ``get_resource_stats()``. The step belongs in the
    ``counts`` slot: it reads the stored values of the CSR counts (a dense ``counts_ng`` is
    converted), a tenth of a dense pass at typical sparsity, and sums them in float64 (exact).
    """

    reads_counts = False  # the CSR counts of the counts slot (dense ones are converted)
    output_key = "covariates_nc"
    membership_gk: torch.Tensor
    median_total: torch.Tensor
    mean_c: torch.Tensor
    std_c: torch.Tensor
    quantiles_qc: torch.Tensor
    fraction_clipped: torch.Tensor

    def __init__(
        self,
        mito_g: torch.Tensor,
        ribo_g: torch.Tensor,
        category_g: torch.Tensor,
        obs_numeric: Sequence[tuple[str, str]] = (),
        efficiency_range: tuple[float, float] = (0.1, 1.0),
    ) -> None:
        """``mito_g`` / ``ribo_g``: bool per gene; ``category_g``: index into
        :data:`ALLOCATION_CATEGORIES` per gene; ``obs_numeric``: (name, batch key)."""
        super().__init__()
        one_hot = torch.nn.functional.one_hot(category_g.long(), len(ALLOCATION_CATEGORIES))
        membership = torch.cat([one_hot, mito_g[:, None], ribo_g[:, None]], dim=1)
        self.register_buffer("membership_gk", membership.to(torch.float64))
        self.obs_numeric = [(str(name), str(key)) for name, key in obs_numeric]
        self.names = [*BUILTIN_COVARIATES, *(name for name, _ in self.obs_numeric)]
        self.efficiency_range = (float(efficiency_range[0]), float(efficiency_range[1]))
        c, f64 = len(self.names), torch.float64
        self.register_buffer("median_total", torch.ones((), dtype=f64))
        self.register_buffer("mean_c", torch.zeros(c + 1, dtype=f64))
        self.register_buffer("std_c", torch.zeros(c + 1, dtype=f64))
        self.register_buffer("quantiles_qc", torch.zeros(len(QUANTILE_LEVELS), c + 1, dtype=f64))
        self.register_buffer("fraction_clipped", torch.zeros(2, dtype=f64))

    @property
    def output_keys(self) -> tuple[str, ...]:
        return ("covariates_nc", "allocation_na", "efficiency_n")

    def config(self) -> dict[str, Any]:
        return {"obs_numeric": self.obs_numeric, "efficiency_range": self.efficiency_range}

    def _category_sums(self, counts_ng: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per cell (float64): counts per allocation category (n x 5), then mitochondrial and
        ribosomal counts and genes detected (n x 3): one sparse product of the stored values
        with the genes' membership (float64 sums: exact for integer counts)."""
        if counts_ng.layout != torch.sparse_csr:
            counts_ng = counts_ng.to_sparse_csr()
        values = counts_ng.values()
        as_float = torch.sparse_csr_tensor(
            counts_ng.crow_indices(),
            counts_ng.col_indices(),
            values.to(torch.float64),
            counts_ng.shape,
            check_invariants=False,
        )
        sums = as_float @ self.membership_gk
        detected = counts_ng.crow_indices().diff().to(torch.float64)
        stored_zeros = values == 0
        if bool(stored_zeros.any()):
            rows = rows_of_stored_values(counts_ng).to(values.device)[stored_zeros]
            detected -= torch.bincount(rows, minlength=counts_ng.shape[0]).to(torch.float64)
        k = len(ALLOCATION_CATEGORIES)
        return sums[:, :k], torch.cat([sums[:, k:], detected[:, None]], dim=1)

    def covariates(self, batch: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """(``covariates_nc`` in float64, ``allocation_na`` in float64)."""
        allocation_na, per_cell = self._category_sums(batch["counts_ng"])
        data_total = allocation_na.sum(1, keepdim=True)
        positive = data_total > 0
        allocation_na = torch.where(positive, allocation_na / data_total.clamp_min(1e-300), 0.0)
        pct = torch.where(positive, 100.0 * per_cell[:, :2] / data_total.clamp_min(1e-300), 0.0)
        total_n = batch["total_counts_n"].to(torch.float64)
        log_total = torch.where(total_n > 0, torch.log(total_n.clamp_min(1e-300)), 0.0)
        columns = [
            log_total,
            torch.log1p(per_cell[:, 2]),
            pct[:, 0],
            pct[:, 1],
            *(batch[key].to(torch.float64) for _, key in self.obs_numeric),
        ]
        return torch.stack(columns, dim=1), allocation_na

    def table(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Library size then covariates, per cell (what the fitting pass gathers)."""
        covariates_nc, _ = self.covariates(batch)
        total_n = batch["total_counts_n"].to(torch.float64)
        return torch.cat([total_n[:, None], covariates_nc], dim=1)

    def fit_metric(self) -> CovariateTableMetric:
        return CovariateTableMetric(self.table, self.efficiency_range)

    def load_fitted(self, result: Mapping[str, torch.Tensor]) -> None:
        device = self.median_total.device
        self.median_total = result["median_positive"].to(device)
        self.mean_c = result["mean_c"].to(device)
        self.std_c = result["std_c"].to(device)
        self.quantiles_qc = result["quantiles_qc"].to(device)
        self.fraction_clipped = torch.stack(
            [result["fraction_below"], result["fraction_above"]]
        ).to(device, torch.float64)
        self.fitted = True

    def forward(
        self, batch: Mapping[str, torch.Tensor], context: StepContext | None = None
    ) -> Batch:
        covariates_nc, allocation_na = self.covariates(batch)
        total_n = batch["total_counts_n"].to(torch.float64)
        low, high = self.efficiency_range
        efficiency_n = (total_n / self.median_total).clamp(low, high)
        return {
            "covariates_nc": covariates_nc.to(torch.float32),
            "allocation_na": allocation_na.to(torch.float32),
            "efficiency_n": efficiency_n.to(torch.float32),
        }

    def summary(self) -> dict[str, Any]:
        """Train distribution of each covariate and of the library size (after fitting)."""
        names = ["library_size", *self.names]
        quantiles = self.quantiles_qc.cpu().tolist()
        return {
            name: {
                "mean": float(self.mean_c[column]),
                "std": float(self.std_c[column]),
                "quantiles": {
                    f"q{round(level * 100):02d}": quantiles[row][column]
                    for row, level in enumerate(QUANTILE_LEVELS)
                },
            }
            for column, name in enumerate(names)
        }

    def __repr__(self) -> str:
        return f"ResourceCovariates({self.names}, efficiency_range={self.efficiency_range})"


class ResourceEmbedding(FittableTransform):
    r"""``resource_nd``: chosen covariates z-scored with train statistics, then, per gene block
    (energy, nutrient), the block's leading principal components of ``x_ng``, each divided by
    its standard deviation on the train split, then zeros up to ``width``.

    Fitted from one :class:`~enhanced_dm.fitting.linear.GramMetric` pass (float64 sums and Gram
    matrix over the covariates and the union of the blocks' genes; exact, DDP-summable): means
    and standard deviations (ddof=1) of the covariates, and each block's covariance
    eigenvectors (:func:`~enhanced_dm.fitting.linear.principal_components`; signs: largest
    loading positive). A covariate constant on the train split gives a 0 column; a block whose
    rank (or train cell count) is below its width leaves its last columns 0, with a warning.
    """

    accepts_sparse = True
    reads_counts = False
    output_key = "resource_nd"
    genes_u: torch.Tensor
    covariate_mean_f: torch.Tensor
    covariate_inverse_std_f: torch.Tensor
    mean_u: torch.Tensor
    loadings_ud: torch.Tensor
    variance_d: torch.Tensor
    block_variance_b: torch.Tensor

    def __init__(
        self,
        covariates: Sequence[tuple[str, int]],
        blocks: Sequence[tuple[str, torch.Tensor, int]],
        width: int,
    ) -> None:
        """``covariates``: (name, column of ``covariates_nc``); ``blocks``: (name, gene
        indices, number of components)."""
        super().__init__()
        self.covariates = [(str(name), int(column)) for name, column in covariates]
        self.blocks = [(str(name), int(k)) for name, _, k in blocks]
        self.width = int(width)
        indices = [genes.long() for _, genes, _ in blocks]
        genes_u = torch.unique(torch.cat(indices)) if indices else torch.zeros(0, dtype=torch.long)
        self.block_rows = [torch.searchsorted(genes_u, genes) for genes in indices]
        n_pcs = sum(k for _, k in self.blocks)
        if len(self.covariates) + n_pcs > self.width:
            raise ValueError("ResourceEmbedding: covariates and components exceed the width")
        f, u, f64 = len(self.covariates), int(genes_u.numel()), torch.float64
        self.register_buffer("genes_u", genes_u)
        self.register_buffer("covariate_mean_f", torch.zeros(f, dtype=f64))
        self.register_buffer("covariate_inverse_std_f", torch.zeros(f, dtype=f64))
        self.register_buffer("mean_u", torch.zeros(u, dtype=f64))
        self.register_buffer("loadings_ud", torch.zeros(u, n_pcs, dtype=f64))
        self.register_buffer("variance_d", torch.zeros(n_pcs, dtype=f64))
        self.register_buffer("block_variance_b", torch.zeros(len(self.blocks), dtype=f64))

    @property
    def names(self) -> list[str]:
        """Every column of ``resource_nd``."""
        names = [name for name, _ in self.covariates]
        names += [f"{block}_pc{i + 1}" for block, k in self.blocks for i in range(k)]
        return names + [f"padding_{i + 1}" for i in range(self.width - len(names))]

    def config(self) -> dict[str, Any]:
        return {"covariates": self.covariates, "blocks": self.blocks, "width": self.width}

    def fit_metric(self) -> GramMetric:
        columns = torch.tensor([column for _, column in self.covariates], dtype=torch.long)
        return GramMetric({"covariates_nc": columns, "x_ng": self.genes_u})

    def load_fitted(self, result: Mapping[str, torch.Tensor]) -> None:
        count, sum_f, gram_ff = float(result["count"]), result["sum_f"], result["gram_ff"]
        f = len(self.covariates)
        mean_f = sum_f[:f] / count
        variance_f = (torch.diagonal(gram_ff)[:f] - count * mean_f * mean_f) / max(count - 1, 1)
        constant = variance_f <= 1e-12 * (1.0 + mean_f * mean_f)
        inverse_std = torch.where(constant, 0.0, variance_f.clamp_min(1e-300).rsqrt())
        loadings = torch.zeros_like(self.loadings_ud)
        variance = torch.zeros_like(self.variance_d)
        block_variance = torch.zeros_like(self.block_variance_b)
        mean_u = sum_f[f:] / count
        column = 0
        for index, ((block, k), rows) in enumerate(zip(self.blocks, self.block_rows, strict=True)):
            rows = rows.to(sum_f.device)
            positions = rows + f
            pca = principal_components(count, sum_f[positions], gram_ff[positions][:, positions], k)
            found = pca.components_fk.shape[1]
            if found < k:
                warnings.warn(
                    f"resource embedding: the {block} block has {found} usable components "
                    f"(rank of its {len(rows)} genes over {int(count)} train cells) of the {k} "
                    "asked; the rest of its columns are 0",
                    stacklevel=2,
                )
            loadings[rows, column : column + found] = pca.components_fk * pca.variance_k.rsqrt()
            variance[column : column + found] = pca.variance_k
            block_variance[index] = pca.total_variance
            column += k
        device = self.mean_u.device
        self.covariate_mean_f = mean_f.to(device)
        self.covariate_inverse_std_f = inverse_std.to(device)
        self.mean_u = mean_u.to(device)
        self.loadings_ud = loadings.to(device)
        self.variance_d = variance.to(device)
        self.block_variance_b = block_variance.to(device)
        self.fitted = True

    def forward(
        self, batch: Mapping[str, torch.Tensor], context: StepContext | None = None
    ) -> Batch:
        covariates_nc = batch["covariates_nc"]
        device, f32 = covariates_nc.device, torch.float32
        columns = torch.tensor([column for _, column in self.covariates], device=device)
        parts = [
            (covariates_nc[:, columns].to(torch.float64) - self.covariate_mean_f)
            * self.covariate_inverse_std_f
        ]
        if self.loadings_ud.shape[1]:
            x_ng = F.densify(batch["x_ng"])
            centred = x_ng[:, self.genes_u].to(f32) - self.mean_u.to(f32)
            parts.append(centred @ self.loadings_ud.to(f32))
        n = covariates_nc.shape[0]
        used = sum(part.shape[1] for part in parts)
        parts.append(torch.zeros(n, self.width - used, device=device))
        return {"resource_nd": torch.cat([part.to(f32) for part in parts], dim=1)}

    def explained(self) -> dict[str, dict[str, Any]]:
        """Per block: components kept and the share of the block's variance each explains."""
        out, column = {}, 0
        for index, (block, k) in enumerate(self.blocks):
            variance = self.variance_d[column : column + k]
            total = float(self.block_variance_b[index])
            ratios = (variance / total).tolist() if total > 0 else [0.0] * k
            out[block] = {
                "components": int((variance > 0).sum()),
                "variance_explained": ratios,
                "total_variance_explained": float(sum(ratios)),
            }
            column += k
        return out

    def __repr__(self) -> str:
        return f"ResourceEmbedding(width={self.width}, blocks={self.blocks})"
