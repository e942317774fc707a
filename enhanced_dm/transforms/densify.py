"""Densify the sparse count batch on the device and start the expression matrix."""

from __future__ import annotations

from collections.abc import Mapping

import torch

from enhanced_dm.transforms import functional as F
from enhanced_dm.transforms.base import Batch, Transform

__all__ = ["Densify"]


class Densify(Transform):
    """Turn ``counts_ng`` (CSR on the way) into a dense tensor and set ``x_ng = float32(counts)``.

    Counts keep their integer dtype, so mixed precision never casts them.
    """

    def forward(self, batch: Mapping[str, torch.Tensor]) -> Batch:
        counts_ng = F.densify(batch["counts_ng"])
        return {"counts_ng": counts_ng, "x_ng": counts_ng.to(torch.float32)}

    def __repr__(self) -> str:
        return "Densify()"
