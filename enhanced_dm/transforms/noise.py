"""Count noise: gene variability fitted from raw counts, count augmentation on the stored values
of the sparse batch (training only), and noise inputs for generative models."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal, get_args

import torch

from enhanced_dm.csr import repeat_per_stored_value, rows_of_stored_values
from enhanced_dm.fitting.moments import RawMomentsMetric
from enhanced_dm.transforms.base import Batch, FittableTransform, Transform
from enhanced_dm.transforms.context import StepContext
from enhanced_dm.transforms.functional import densify, map_stored_values

__all__ = [
    "NOISE_TYPES",
    "CountNoise",
    "GeneVariability",
    "NoiseInputs",
    "NoiseType",
    "VARIABILITY_COLUMNS",
]

NoiseType = Literal["thinning", "size", "dropout"]
NOISE_TYPES: tuple[str, ...] = get_args(NoiseType)
VARIABILITY_COLUMNS = ("mean", "variance", "fano", "cv2", "overdispersion")


class GeneVariability(FittableTransform):
    r"""Per gene, from the raw counts of the train cells: ``mean_g``, ``variance_g`` (ddof=1),
    ``fano_g`` = variance / mean, ``cv2_g`` = variance / mean², ``overdispersion_g`` =
    :math:`\max(0, (\sigma^2 - \mu) / \mu^2)` (the negative binomial's method-of-moments
    :math:`1/\theta`). Genes with mean 0 get 0 in every column. Float64 buffers (exact sums)
    that a model can read as targets; the step writes nothing to the batch.
    """

    reads_counts = False  # its metric reads counts_ng in either layout
    monitored = False
    output_key = "counts_ng"
    mean_g: torch.Tensor
    variance_g: torch.Tensor
    fano_g: torch.Tensor
    cv2_g: torch.Tensor
    overdispersion_g: torch.Tensor

    def __init__(self, n_genes: int) -> None:
        super().__init__()
        for column in VARIABILITY_COLUMNS:
            self.register_buffer(f"{column}_g", torch.zeros(n_genes, dtype=torch.float64))

    @property
    def output_keys(self) -> tuple[str, ...]:
        return ()

    def fit_metric(self) -> RawMomentsMetric:
        return RawMomentsMetric(int(self.mean_g.shape[0]), key="counts_ng")

    def load_fitted(self, result: Mapping[str, torch.Tensor]) -> None:
        n = float(result["count"])
        mean = result["sum_g"].reshape(-1) / max(n, 1.0)
        variance = (result["sumsq_g"].reshape(-1) - n * mean * mean).clamp_min(0) / max(n - 1, 1.0)
        expressed = mean > 0
        safe = torch.where(expressed, mean, 1.0)
        zero = torch.zeros_like(mean)
        columns = {
            "mean": mean,
            "variance": torch.where(expressed, variance, zero),
            "fano": torch.where(expressed, variance / safe, zero),
            "cv2": torch.where(expressed, variance / safe**2, zero),
            "overdispersion": torch.where(
                expressed, ((variance - mean) / safe**2).clamp_min(0), zero
            ),
        }
        for column, values in columns.items():
            setattr(self, f"{column}_g", values.to(self.mean_g.device))
        self.fitted = True

    def forward(
        self, batch: Mapping[str, torch.Tensor], context: StepContext | None = None
    ) -> Batch:
        return {}

    def __repr__(self) -> str:
        return f"GeneVariability(n_genes={self.mean_g.shape[0]})"


def _row_sums(rows_v: torch.Tensor, values: torch.Tensor, n_rows: int) -> torch.Tensor:
    """Per-row sums (float64) of stored ``values`` whose rows are ``rows_v``."""
    total = torch.zeros(n_rows, dtype=torch.float64, device=values.device)
    return total.index_add_(0, rows_v, values.to(torch.float64))


class CountNoise(Transform):
    r"""Count augmentation in the train stage, on the stored values of the CSR counts.

    One strength :math:`s_c \sim U(\text{strength\_range})` per cell drives every active type,
    applied in this order:

    1. ``thinning`` (intrinsic, technical sampling): :math:`x \sim \text{Binomial}(x, 1 - s_c)`;
    2. ``size`` (extrinsic, the whole cell): :math:`x \sim \text{Poisson}(x\, e^{s_c z_c})`,
       :math:`z_c \sim N(0, 1)`, so counts stay integers;
    3. ``dropout``: each stored count set to 0 with probability :math:`s_c / 2`.

    ``total_counts_n`` is scaled by the ratio of the cell's augmented to original stored counts
    (1 for a cell without counts). Writes ``noise_strength_n`` (0 outside training),
    ``noise_keep_fraction_n`` and ``noise_library_factor_n`` (the realised thinning keep
    fraction and the realised library-size factor; training only). Draws come from the step
    context's generator (stream ``"stochastic"``): the same seed, epoch, rank and batch index
    give the same noise. Outside the train stage the batch passes unchanged.
    """

    reads_counts = False  # the CSR counts of the counts slot
    output_key = "noise_library_factor_n"
    also_monitored = ("noise_keep_fraction_n", "noise_strength_n")

    def __init__(self, types: Sequence[str], strength_range: tuple[float, float]) -> None:
        super().__init__()
        unknown = set(types) - set(NOISE_TYPES)
        if unknown:
            raise ValueError(f"unknown noise types {sorted(unknown)}; expected {NOISE_TYPES}")
        self.types = [name for name in NOISE_TYPES if name in types]  # the documented order
        self.strength_range = (float(strength_range[0]), float(strength_range[1]))

    @property
    def output_keys(self) -> tuple[str, ...]:
        return (
            "counts_ng",
            "total_counts_n",
            "noise_strength_n",
            "noise_keep_fraction_n",
            "noise_library_factor_n",
        )

    def config(self) -> dict[str, Any]:
        return {"types": self.types, "strength_range": self.strength_range}

    def forward(
        self, batch: Mapping[str, torch.Tensor], context: StepContext | None = None
    ) -> Batch:
        counts = batch["counts_ng"]
        n = counts.shape[0]
        device = batch["cell_index_n"].device
        if context is None or not context.training or not self.types:
            return {"noise_strength_n": torch.zeros(n, device=device)}
        dense = counts.layout != torch.sparse_csr
        csr = counts.to_sparse_csr() if dense else counts
        generator = context.generator(device, stream="stochastic")
        low, high = self.strength_range
        strength_n = low + (high - low) * torch.rand(n, generator=generator, device=device)
        original = csr.values().to(torch.float32)
        values = original
        strength_v = repeat_per_stored_value(csr, strength_n)
        rows_v = rows_of_stored_values(csr).to(device)  # once: every sum below shares it
        original_n = _row_sums(rows_v, original, n)
        kept_n = original_n
        if "thinning" in self.types:
            values = torch.binomial(values, 1.0 - strength_v, generator=generator)
            kept_n = _row_sums(rows_v, values, n)
        if "size" in self.types:
            z_n = torch.randn(n, generator=generator, device=device)
            factor_v = repeat_per_stored_value(csr, torch.exp(strength_n * z_n))
            values = torch.poisson(values * factor_v, generator=generator)
        if "dropout" in self.types:
            draw = torch.rand(values.shape, generator=generator, device=device)
            values = torch.where(draw < strength_v / 2, 0.0, values)
        final_n = _row_sums(rows_v, values, n)
        has_counts = original_n > 0
        ratio_n = torch.where(has_counts, final_n / original_n.clamp_min(1e-300), 1.0)
        augmented = map_stored_values(csr, values.to(csr.values().dtype))
        total_n = batch["total_counts_n"]
        return {
            "counts_ng": densify(augmented) if dense else augmented,
            "total_counts_n": (total_n.to(torch.float64) * ratio_n).to(total_n.dtype),
            "noise_strength_n": strength_n,
            "noise_keep_fraction_n": torch.where(
                has_counts, kept_n / original_n.clamp_min(1e-300), 1.0
            ).to(torch.float32),
            "noise_library_factor_n": ratio_n.to(torch.float32),
        }

    def __repr__(self) -> str:
        return f"CountNoise(types={self.types}, strength_range={self.strength_range})"


class NoiseInputs(Transform):
    """``noise_nd``: ``intrinsic_dim`` N(0, 1) values per cell, then ``extrinsic_dim`` values
    shared by the cells of one ``group_key`` code (per cell without a group key).

    In the train stage the draws are fresh for every batch (the step context's generator);
    in every other stage they are a fixed function of the cell index (intrinsic) and of the
    group code (extrinsic; of the cell index without a group key), so a model sees the same
    noise input for a cell at every evaluation.
    """

    reads_counts = False
    output_key = "noise_nd"

    def __init__(self, intrinsic_dim: int, extrinsic_dim: int, group_key: str | None) -> None:
        super().__init__()
        self.intrinsic_dim = int(intrinsic_dim)
        self.extrinsic_dim = int(extrinsic_dim)
        self.group_key = group_key

    def config(self) -> dict[str, Any]:
        return {
            "intrinsic_dim": self.intrinsic_dim,
            "extrinsic_dim": self.extrinsic_dim,
            "group_key": self.group_key,
        }

    def forward(
        self, batch: Mapping[str, torch.Tensor], context: StepContext | None = None
    ) -> Batch:
        cells = batch["cell_index_n"]
        groups = cells if self.group_key is None else batch[self.group_key].long()
        n, device = cells.shape[0], cells.device
        if context is not None and context.training:
            generator = context.generator(device, stream="stochastic_inputs")
            intrinsic = torch.randn(n, self.intrinsic_dim, generator=generator, device=device)
            codes, position = torch.unique(groups, return_inverse=True)
            shared = torch.randn(len(codes), self.extrinsic_dim, generator=generator, device=device)
            extrinsic = shared[position]
        else:
            keyed = context if context is not None else StepContext("predict")
            intrinsic = keyed.keyed_normal(cells, self.intrinsic_dim, "noise_intrinsic")
            extrinsic = keyed.keyed_normal(groups, self.extrinsic_dim, "noise_extrinsic")
        return {"noise_nd": torch.cat([intrinsic, extrinsic], dim=1).to(torch.float32)}

    def __repr__(self) -> str:
        group = f", group_key={self.group_key!r}" if self.group_key else ""
        return f"NoiseInputs({self.intrinsic_dim} + {self.extrinsic_dim}{group})"
