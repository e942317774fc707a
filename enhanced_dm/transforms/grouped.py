"""Base of fitted transforms whose statistics can be per group (batch, cell type)."""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch

from enhanced_dm.transforms.base import FittableTransform

__all__ = ["GroupedTransform", "warn_groups_without_train_cells"]


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
            names = categories.get(transform.group_key.removesuffix("_n"))
            transform.warn_unfitted_groups(None if names is None else list(names))
