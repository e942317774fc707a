"""Base of fitted transforms whose statistics can be per group (batch, cell type)."""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch

from enhanced_dm.transforms.base import Batch, FittableTransform, Transform

if TYPE_CHECKING:
    from enhanced_dm.transforms.context import StepContext

__all__ = [
    "BATCH_CELL_TYPE_KEY",
    "CombinedGroups",
    "GroupedTransform",
    "group_names",
    "warn_groups_without_train_cells",
]


BATCH_CELL_TYPE_KEY = "batch_cell_type_n"
"""Group codes of batch x cell type (``batch_aware_normalization`` and
``biological_normalization`` together): ``batch * n_cell_types + cell_type``."""


class CombinedGroups(Transform):
    """``key`` = ``outer * n_inner + inner`` from two group codes (e.g. batch x cell type), -1
    where either is missing: one grouping for statistics fitted per pair."""

    reads_counts = False
    monitored = False

    def __init__(self, outer_key: str, inner_key: str, n_inner: int, key: str) -> None:
        super().__init__()
        self.outer_key, self.inner_key, self.n_inner = outer_key, inner_key, int(n_inner)
        self.output_key = key

    def forward(
        self, batch: Mapping[str, torch.Tensor], context: StepContext | None = None
    ) -> Batch:
        outer, inner = batch[self.outer_key].long(), batch[self.inner_key].long()
        codes = torch.where((outer >= 0) & (inner >= 0), outer * self.n_inner + inner, -1)
        return {self.output_key: codes}

    def __repr__(self) -> str:
        return f"CombinedGroups({self.outer_key} x {self.inner_key} -> {self.output_key})"


def group_names(group_key: str, categories: Mapping[str, Sequence[str]]) -> list[str] | None:
    """Names of the groups of ``group_key`` (``"<batch>/<cell type>"`` for combined codes)."""
    names = categories.get(group_key.removesuffix("_n"))
    if names is not None:
        return list(names)
    if group_key == BATCH_CELL_TYPE_KEY and {"batch", "cell_type"} <= set(categories):
        return [f"{b}/{c}" for b in categories["batch"] for c in categories["cell_type"]]
    return None


class GroupedTransform(FittableTransform):
    """A fitted transform writing ``key``, with statistics global or per ``group_key`` code.

    ``fitted_b`` marks the groups that had train cells; the others (and missing codes ``-1``) use
    the global statistics. The DataModule calls :meth:`warn_unfitted_groups` once after fitting.
    """

    fitted_b: torch.Tensor

    def __init__(self, n_groups: int = 0, group_key: str | None = None, key: str = "x_ng") -> None:
        super().__init__()
        self.key = key
        self.output_key = key
        self.group_key = group_key
        self.n_groups = n_groups if group_key is not None else 0
        self.register_buffer("fitted_b", torch.zeros(self.n_groups, dtype=torch.bool))

    def config(self) -> dict[str, Any]:
        return {"kind": type(self).__name__, "group_key": self.group_key, "n_groups": self.n_groups}

    def warn_unfitted_groups(self, group_names: list[str] | None = None) -> list[int]:
        """Warn once about groups that will use the global statistics; returns their codes."""
        missing = [int(b) for b in torch.nonzero(~self.fitted_b.cpu()).flatten()]
        if missing and not getattr(self, "_warned_fallback", False):
            names = [group_names[b] if group_names else str(b) for b in missing]
            warnings.warn(
                f"{type(self).__name__}({self.group_key}): groups {names[:10]} have no train cells; "
                "their cells are scaled with the global statistics",
                stacklevel=2,
            )
            self._warned_fallback = True
        return missing


def warn_groups_without_train_cells(
    transforms: Iterable[Any], categories: Mapping[str, Sequence[str]]
) -> None:
    """Let every grouped transform warn (once) about groups that had no train cells."""
    for transform in transforms:
        if isinstance(transform, GroupedTransform) and transform.group_key is not None:
            transform.warn_unfitted_groups(group_names(transform.group_key, categories))
