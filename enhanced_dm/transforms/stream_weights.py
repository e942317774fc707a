"""Adaptive weighting of context streams: each stream scaled to carry the same total variance on
the train split (or by user weights)."""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import torch
from torchmetrics import Metric

from enhanced_dm.transforms.base import Batch, FittableTransform

if TYPE_CHECKING:
    from enhanced_dm.transforms.context import StepContext

__all__ = ["StreamVarianceMetric", "StreamWeights"]


class StreamVarianceMetric(Metric):
    """Per stream: cells, column sums and the sum of squares of every value (float64, summed over
    ranks). A stream narrower than its declared width is padded with zero columns, which add
    nothing to its variance."""

    full_state_update = False
    higher_is_better = None
    is_differentiable = False

    def __init__(self, widths: Mapping[str, int]) -> None:
        super().__init__()
        self.widths = dict(widths)
        f64 = torch.float64
        for index, width in enumerate(self.widths.values()):
            self.add_state(f"count_{index}", torch.zeros((), dtype=f64), dist_reduce_fx="sum")
            self.add_state(f"sum_{index}", torch.zeros(width, dtype=f64), dist_reduce_fx="sum")
            self.add_state(f"sumsq_{index}", torch.zeros((), dtype=f64), dist_reduce_fx="sum")

    def update(self, batch: Mapping[str, torch.Tensor]) -> None:
        for index, key in enumerate(self.widths):
            values = batch[key].to(torch.float64)
            getattr(self, f"count_{index}").add_(values.shape[0])
            getattr(self, f"sum_{index}")[: values.shape[1]].add_(values.sum(0))
            getattr(self, f"sumsq_{index}").add_((values * values).sum())

    def compute(self) -> dict[str, torch.Tensor]:
        """``total_variance_s``: each stream's summed column variances (ddof=1)."""
        variances = []
        for index in range(len(self.widths)):
            count = getattr(self, f"count_{index}")
            total = getattr(self, f"sum_{index}")
            scatter = getattr(self, f"sumsq_{index}") - (total * total).sum() / count.clamp_min(1)
            variances.append((scatter / (count - 1).clamp_min(1)).clamp_min(0))
        return {"total_variance_s": torch.stack(variances)}


class StreamWeights(FittableTransform):
    r"""Scales each context stream :math:`s` by :math:`w_s`, in place.

    Fitted: :math:`w_s = \sqrt{\bar V / V_s}`, :math:`V_s` the stream's total variance (summed
    column variances, ddof=1) on the train split and :math:`\bar V` their mean, so every stream
    carries the same total variance as the average one (a stream without variance keeps
    :math:`w_s = 1`, with a warning). ``fixed`` weights (user weights) replace the fitted ones
    of the streams they name; ``adaptive=False`` leaves the others at 1. The streams keep their
    keys, so this step writes no key of its own (``output_keys`` is empty).
    """

    reads_counts = False
    monitored = False
    output_key = "stream_weights"
    total_variance_s: torch.Tensor
    weight_s: torch.Tensor

    def __init__(
        self,
        widths: Mapping[str, int],
        adaptive: bool = True,
        fixed: Mapping[str, float] | None = None,
    ) -> None:
        super().__init__()
        self.widths = dict(widths)
        self.adaptive = bool(adaptive)
        self.fixed = {str(key): float(value) for key, value in (fixed or {}).items()}
        unknown = set(self.fixed) - set(self.widths)
        if unknown:
            raise ValueError(
                f"stream_weights names {sorted(unknown)}, which are not context streams of this "
                f"pipeline; the streams are {list(self.widths)}"
            )
        n = len(self.widths)
        self.register_buffer("total_variance_s", torch.zeros(n, dtype=torch.float64))
        self.register_buffer("weight_s", torch.ones(n, dtype=torch.float64))
        if not self.adaptive:
            self.weight_s = self._with_fixed(torch.ones(n, dtype=torch.float64))
            self.fitted = True

    @property
    def output_keys(self) -> tuple[str, ...]:
        return ()

    def config(self) -> dict[str, Any]:
        return {"widths": self.widths, "adaptive": self.adaptive, "fixed": self.fixed}

    def _with_fixed(self, weights: torch.Tensor) -> torch.Tensor:
        for index, key in enumerate(self.widths):
            if key in self.fixed:
                weights[index] = self.fixed[key]
        return weights

    def fit_metric(self) -> StreamVarianceMetric:
        return StreamVarianceMetric(self.widths)

    def load_fitted(self, result: Mapping[str, torch.Tensor]) -> None:
        variance = result["total_variance_s"].to(torch.float64).cpu()
        flat = [key for key, v in zip(self.widths, variance.tolist(), strict=True) if v <= 0]
        if flat:
            warnings.warn(
                f"context streams {flat} have no variance on the train split; their weight is 1",
                stacklevel=2,
            )
        positive = variance > 0
        mean = variance[positive].mean() if bool(positive.any()) else torch.ones(())
        weights = torch.where(positive, (mean / variance.clamp_min(1e-300)).sqrt(), 1.0)
        device = self.weight_s.device
        self.total_variance_s = variance.to(device)
        self.weight_s = self._with_fixed(weights).to(device)
        self.fitted = True

    def weights(self) -> dict[str, float]:
        """Stream -> weight applied."""
        return dict(zip(self.widths, self.weight_s.tolist(), strict=True))

    def forward(
        self, batch: Mapping[str, torch.Tensor], context: StepContext | None = None
    ) -> Batch:
        return {
            key: batch[key] * self.weight_s[index].to(batch[key].dtype)
            for index, key in enumerate(self.widths)
        }

    def __repr__(self) -> str:
        return f"StreamWeights({list(self.widths)}, adaptive={self.adaptive})"
