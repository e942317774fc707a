"""Time-course steps: time steps and a sinusoidal time embedding per cell, z-scores per time step
(or against the first step), and kinetics features from the train means of the steps."""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Literal

import torch
from torchmetrics import Metric

from enhanced_dm.fitting.moments import moments_to_mean_std
from enhanced_dm.transforms.base import Batch, FittableTransform, Transform
from enhanced_dm.transforms.z_score import ZScore

if TYPE_CHECKING:
    from enhanced_dm.transforms.context import StepContext

__all__ = [
    "StepMomentsMetric",
    "TemporalKinetics",
    "TimeStepZScore",
    "TimeSteps",
    "sinusoidal_embedding",
]

TimeNormalization = Literal["per_step", "baseline", "none"]


def sinusoidal_embedding(time_n: torch.Tensor, dim: int, base: float = 10_000.0) -> torch.Tensor:
    r"""The transformer's sinusoidal position code of a (continuous) time value:
    :math:`[\sin(t\,\omega_i), \cos(t\,\omega_i)]_{i < d/2}`, :math:`\omega_i = b^{-2i/d}`."""
    half = dim // 2
    frequency = base ** (-torch.arange(half, device=time_n.device, dtype=torch.float64) * 2 / dim)
    angle = time_n.to(torch.float64)[:, None] * frequency
    return torch.cat([torch.sin(angle), torch.cos(angle)], dim=1).to(torch.float32)


class TimeSteps(Transform):
    r"""``time_n`` (the time value, float32) and ``time_step_n`` (int64 in ``0 .. steps-1``)
    from the obs column read as ``key``, and ``time_embedding_nd`` (:func:`sinusoidal_embedding`,
    when ``embedding_dim > 0``).

    ``time_step_n`` = :math:`\#\{e \in \text{edges} : e \le t\}`: a time equal to an edge goes to
    the later step. The edges are per-dataset constants (set up from the train cells' times).
    """

    reads_counts = False
    monitored = False
    output_key = "time_step_n"
    edges_e: torch.Tensor

    def __init__(self, edges: torch.Tensor, key: str, embedding_dim: int = 0) -> None:
        super().__init__()
        self.key = key
        self.embedding_dim = int(embedding_dim)
        self.register_buffer("edges_e", edges.to(torch.float64).clone())

    @property
    def n_steps(self) -> int:
        return int(self.edges_e.numel()) + 1

    @property
    def output_keys(self) -> tuple[str, ...]:
        keys = ("time_step_n", "time_n")
        return (*keys, "time_embedding_nd") if self.embedding_dim else keys

    def forward(
        self, batch: Mapping[str, torch.Tensor], context: StepContext | None = None
    ) -> Batch:
        time_n = batch[self.key].to(torch.float64)
        out = {
            "time_step_n": torch.bucketize(time_n, self.edges_e, right=True),
            "time_n": time_n.to(torch.float32),
        }
        if self.embedding_dim:
            out["time_embedding_nd"] = sinusoidal_embedding(time_n, self.embedding_dim)
        return out

    def __repr__(self) -> str:
        return f"TimeSteps(steps={self.n_steps}, embedding_dim={self.embedding_dim})"


class TimeStepZScore(ZScore):
    r"""Gene-wise z-score with time-step statistics (fitted on the train cells).

    ``"per_step"``: each cell uses its own step's mean and std; ``"baseline"``: every cell uses
    the first step's, so values read as change from :math:`t_0` in units of its spread. A step
    with fewer than ``min_cells`` train cells (the first step, for ``"baseline"``) falls back to
    the global statistics, with one warning (:meth:`warn_unfitted_groups`).
    """

    def __init__(
        self,
        n_genes: int,
        n_steps: int,
        mode: Literal["per_step", "baseline"],
        min_cells: int,
        max_value: float | None = None,
    ) -> None:
        super().__init__(n_genes, n_steps, "time_step_n", max_value)
        self.mode = mode
        self.min_cells = int(min_cells)

    def config(self) -> dict[str, Any]:
        return {**super().config(), "mode": self.mode, "min_cells": self.min_cells}

    def _center_scale(
        self, state: Mapping[str, torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        mean_g, std_g, mean_bg, std_bg, _ = super()._center_scale(state)
        enough_b = state["count_b"] >= self.min_cells
        if self.mode == "baseline":
            mean_bg = mean_bg[:1].expand_as(mean_bg)
            std_bg = std_bg[:1].expand_as(std_bg)
            enough_b = enough_b[:1].expand_as(enough_b)
        return mean_g, std_g, mean_bg, std_bg, enough_b

    def warn_unfitted_groups(self, group_names: list[str] | None = None) -> list[int]:
        missing = [int(b) for b in torch.nonzero(~self.fitted_b.cpu()).flatten()]
        if missing and not getattr(self, "_warned_fallback", False):
            which = "the first step has" if self.mode == "baseline" else f"steps {missing} have"
            warnings.warn(
                f"time-step normalization ({self.mode}): {which} fewer than "
                f"min_cells_per_step={self.min_cells} train cells; their cells use the global "
                "statistics",
                stacklevel=2,
            )
            self._warned_fallback = True
        return missing


class StepMomentsMetric(Metric):
    """Per time step: cell counts and per-gene sums of ``x_log_ng``, and sums / sums of squares
    of ``x_ng`` over all genes (float64, summed over ranks)."""

    full_state_update = False
    higher_is_better = None
    is_differentiable = False
    count_s: torch.Tensor
    sum_sg: torch.Tensor
    normalized_s: torch.Tensor

    def __init__(self, n_steps: int, n_genes: int) -> None:
        super().__init__()
        f64 = torch.float64
        self.add_state("count_s", torch.zeros(n_steps, dtype=f64), dist_reduce_fx="sum")
        self.add_state("sum_sg", torch.zeros(n_steps, n_genes, dtype=f64), dist_reduce_fx="sum")
        self.add_state("normalized_s", torch.zeros(n_steps, 2, dtype=f64), dist_reduce_fx="sum")

    def update(self, batch: Mapping[str, torch.Tensor]) -> None:
        step_n = batch["time_step_n"].long()
        log_ng = batch["x_log_ng"].to(torch.float64)
        x_ng = batch["x_ng"].to(torch.float64)
        self.count_s.index_add_(0, step_n, torch.ones_like(step_n, dtype=torch.float64))
        self.sum_sg.index_add_(0, step_n, log_ng)
        moments = torch.stack([x_ng.sum(1), (x_ng * x_ng).sum(1)], dim=1)
        self.normalized_s.index_add_(0, step_n, moments)

    def compute(self) -> dict[str, torch.Tensor]:
        return {
            "count_s": self.count_s.clone(),
            "sum_sg": self.sum_sg.clone(),
            "normalized_s": self.normalized_s.clone(),
        }


class TemporalKinetics(FittableTransform):
    r"""Fast / slow responses and the lagged state, from the train mean of each time step.

    With :math:`\bar x_s` the mean log-normalized expression (``x_log_ng``) of the train cells
    of step :math:`s` and :math:`s_c` the cell's step:
    ``fast_response_ng`` = :math:`x_c - \bar x_{s_c - 1}` (0 at the first step),
    ``slow_response_ng`` = :math:`x_c - \bar x_0`, ``previous_state_ng`` =
    :math:`\bar x_{s_c - 1}` (the first step: its own mean). A step with fewer than
    ``min_cells`` train cells uses the mean of all train cells instead.

    The fitting pass also sums the normalized values ``x_ng`` per step (all genes), reported as
    each step's mean and std by ``get_temporal_stats()``.
    """

    reads_counts = False
    reads_log_expression = True
    output_key = "fast_response_ng"
    step_mean_sg: torch.Tensor
    count_s: torch.Tensor
    normalized_mean_s: torch.Tensor
    normalized_std_s: torch.Tensor

    def __init__(self, n_steps: int, n_genes: int, min_cells: int) -> None:
        super().__init__()
        self.min_cells = int(min_cells)
        f64 = torch.float64
        self.register_buffer("step_mean_sg", torch.zeros(n_steps, n_genes, dtype=torch.float32))
        self.register_buffer("count_s", torch.zeros(n_steps, dtype=f64))
        self.register_buffer("normalized_mean_s", torch.zeros(n_steps, dtype=f64))
        self.register_buffer("normalized_std_s", torch.zeros(n_steps, dtype=f64))

    @property
    def output_keys(self) -> tuple[str, ...]:
        return ("fast_response_ng", "slow_response_ng", "previous_state_ng")

    def config(self) -> dict[str, Any]:
        return {"min_cells": self.min_cells}

    def fit_metric(self) -> StepMomentsMetric:
        n_steps, n_genes = self.step_mean_sg.shape
        return StepMomentsMetric(n_steps, n_genes)

    @property
    def fallback_steps(self) -> list[int]:
        return [int(s) for s in torch.nonzero(self.count_s < self.min_cells).flatten()]

    def load_fitted(self, result: Mapping[str, torch.Tensor]) -> None:
        n_steps, n_genes = self.step_mean_sg.shape
        count_s = result["count_s"].reshape(n_steps)
        sum_sg = result["sum_sg"].reshape(n_steps, n_genes)
        overall_g = sum_sg.sum(0) / count_s.sum().clamp_min(1.0)
        step_mean = sum_sg / count_s.clamp_min(1.0)[:, None]
        enough = count_s >= self.min_cells
        step_mean = torch.where(enough[:, None], step_mean, overall_g)
        values = count_s * n_genes
        moments = result["normalized_s"].reshape(n_steps, 2)
        mean_s, std_s = moments_to_mean_std(values, moments[:, 0], moments[:, 1])
        device = self.count_s.device
        self.step_mean_sg = step_mean.to(device, torch.float32)
        self.count_s = count_s.to(device)
        self.normalized_mean_s = torch.where(values > 0, mean_s, math.nan).to(device)
        self.normalized_std_s = torch.where(values > 1, std_s, math.nan).to(device)
        self.fitted = True
        if not bool(enough.all()):
            warnings.warn(
                f"temporal kinetics: steps {self.fallback_steps} have fewer than "
                f"min_cells_per_step={self.min_cells} train cells; their mean is the mean of all "
                "train cells",
                stacklevel=2,
            )

    def forward(
        self, batch: Mapping[str, torch.Tensor], context: StepContext | None = None
    ) -> Batch:
        x_ng = batch["x_log_ng"]
        step_n = batch["time_step_n"].long()
        previous_ng = self.step_mean_sg[(step_n - 1).clamp_min(0)]
        first = (step_n == 0)[:, None]
        return {
            "fast_response_ng": torch.where(first, 0.0, x_ng - previous_ng),
            "slow_response_ng": x_ng - self.step_mean_sg[0],
            "previous_state_ng": previous_ng,
        }

    def __repr__(self) -> str:
        return f"TemporalKinetics(steps={self.step_mean_sg.shape[0]})"
