"""Shared holder for gene-wise centre/scale statistics, global or per group (batch, cell type)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import torch

from enhanced_dm.transforms import functional as F
from enhanced_dm.transforms.base import Batch
from enhanced_dm.transforms.grouped import GroupedTransform

if TYPE_CHECKING:
    from enhanced_dm.transforms.context import StepContext

__all__ = ["CenterScaleTransform"]


class CenterScaleTransform(GroupedTransform):
    r"""Base of transforms that compute :math:`(x_{cg} - c_g) / s_g`, optionally clipped.

    With ``group_key`` (e.g. ``"batch_n"``) the statistics are fitted per group code and each cell
    uses its group's row; a group with no train cells (or a missing code) falls back to the global
    statistics. Subclasses only say how to fit (``fit_metric``) and how to turn the metric's result
    into ``center``/``scale`` (``_center_scale``).
    """

    reads_counts = False  # reads x_ng (and total_counts_n), never the dense counts

    center_g: torch.Tensor
    scale_g: torch.Tensor
    center_bg: torch.Tensor
    scale_bg: torch.Tensor

    def __init__(
        self,
        n_genes: int,
        n_groups: int = 0,
        group_key: str | None = None,
        max_value: float | None = None,
        key: str = "x_ng",
    ) -> None:
        super().__init__(n_groups, group_key, key)
        self.max_value = max_value
        self.clip_value = max_value
        self.register_buffer("center_g", torch.zeros(n_genes))
        self.register_buffer("scale_g", torch.ones(n_genes))
        self.register_buffer("center_bg", torch.zeros(self.n_groups, n_genes))
        self.register_buffer("scale_bg", torch.ones(self.n_groups, n_genes))

    def config(self) -> dict[str, Any]:
        return {**super().config(), "max_value": self.max_value}

    def _center_scale(
        self, state: Mapping[str, torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(center_g, scale_g, center_bg, scale_bg, fitted_b) from the metric's result."""
        raise NotImplementedError  # pragma: no cover

    def load_fitted(self, state: Mapping[str, torch.Tensor]) -> None:
        center_g, scale_g, center_bg, scale_bg, fitted_b = self._center_scale(state)
        self.center_g.copy_(center_g)
        self.scale_g.copy_(scale_g)
        self.center_bg.copy_(center_bg)
        self.scale_bg.copy_(scale_bg)
        self.fitted_b.copy_(fitted_b)
        self.fitted = True
        self._warned_fallback = False

    def forward(
        self, batch: Mapping[str, torch.Tensor], context: StepContext | None = None
    ) -> Batch:
        x_ng = batch[self.key]  # sparse CSR stays sparse: standardize writes the dense result once
        if self.group_key is None or self.n_groups == 0:
            center, scale = self.center_g, self.scale_g
        else:
            group_n = batch[self.group_key]
            center = F.gather_group_rows(self.center_bg, self.center_g, group_n, self.fitted_b)
            scale = F.gather_group_rows(self.scale_bg, self.scale_g, group_n, self.fitted_b)
        return {self.key: F.standardize(x_ng, center, scale, self.max_value)}

    def __repr__(self) -> str:
        group = f", group_key={self.group_key!r}" if self.group_key else ""
        clip = f", max_value={self.max_value}" if self.max_value is not None else ""
        return f"{type(self).__name__}(n_genes={self.center_g.shape[0]}{group}{clip})"
