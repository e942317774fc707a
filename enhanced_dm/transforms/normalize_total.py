"""Total-count (library size) normalization."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import torch

from enhanced_dm.errors import ConfigError
from enhanced_dm.fitting.totals import MedianTotalMetric
from enhanced_dm.transforms import functional as F
from enhanced_dm.transforms.base import Batch, FittableTransform

if TYPE_CHECKING:
    from enhanced_dm.transforms.context import StepContext

__all__ = ["NormalizeTotal"]


class NormalizeTotal(FittableTransform):
    r"""Scale each cell to ``target_sum`` total counts.

    .. math:: y_{cg} = x_{cg} \cdot \frac{\text{target\_sum}}{t_c}

    ``target_sum="median"`` uses the median non-zero library size of the TRAIN cells, which is
    ``scanpy.pp.normalize_total(target_sum=None)`` fitted once instead of per matrix. Only the
    median form needs fitting; a numeric target is ready at construction.
    """

    reads_counts = False  # reads x_ng (and total_counts_n), never the dense counts

    target_sum: torch.Tensor

    def __init__(
        self, target_sum: float | str = 1e4, key: str = "x_ng", total_key: str = "total_counts_n"
    ) -> None:
        super().__init__()
        if isinstance(target_sum, str) and target_sum != "median":
            raise ConfigError(
                f"target_sum must be a positive number or 'median', got {target_sum!r}"
            )
        if not isinstance(target_sum, str) and not float(target_sum) > 0:
            raise ConfigError(
                f"target_sum must be a positive number or 'median', got {target_sum!r}"
            )
        self.key = key
        self.output_key = key
        self.total_key = total_key
        self.target_sum_option = target_sum
        initial = 1.0 if target_sum == "median" else float(target_sum)
        self.register_buffer("target_sum", torch.tensor(initial, dtype=torch.float32))
        self.fitted = target_sum != "median"

    def config(self) -> dict[str, Any]:
        return {"target_sum": self.target_sum_option}

    def fit_metric(self) -> MedianTotalMetric:
        return MedianTotalMetric(self.total_key)

    def load_fitted(self, state: Mapping[str, torch.Tensor]) -> None:
        self.target_sum.copy_(state["target_sum"].to(torch.float32))
        self.fitted = True

    def forward(
        self, batch: Mapping[str, torch.Tensor], context: StepContext | None = None
    ) -> Batch:
        return {
            self.key: F.normalize_total(batch[self.key], batch[self.total_key], self.target_sum)
        }

    def __repr__(self) -> str:
        return f"NormalizeTotal(target_sum={self.target_sum_option!r})"
