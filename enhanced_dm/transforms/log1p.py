"""Natural-log transform."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

import torch

from enhanced_dm.transforms import functional as F
from enhanced_dm.transforms.base import Batch, Transform

if TYPE_CHECKING:
    from enhanced_dm.transforms.context import StepContext

__all__ = ["Log1p"]


class Log1p(Transform):
    r""":math:`y = \ln(1 + x)`, as ``scanpy.pp.log1p`` (base e)."""

    reads_counts = False  # reads x_ng (and total_counts_n), never the dense counts

    def __init__(self, key: str = "x_ng") -> None:
        super().__init__()
        self.key = key
        self.output_key = key

    def forward(
        self, batch: Mapping[str, torch.Tensor], context: StepContext | None = None
    ) -> Batch:
        return {self.key: F.log1p(batch[self.key])}

    def __repr__(self) -> str:
        return "Log1p()"
