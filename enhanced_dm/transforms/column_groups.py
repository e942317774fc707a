"""Different gene-wise normalizations on disjoint groups of genes (e.g. TFs and their targets)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from torchmetrics import Metric

from enhanced_dm.fitting.cache import fingerprint
from enhanced_dm.transforms.base import Batch, FittableTransform, Transform

if TYPE_CHECKING:
    from enhanced_dm.transforms.context import StepContext

__all__ = ["ColumnGroupNormalization", "ColumnGroupsMetric"]


def _columns(batch: Mapping[str, Any], key: str, columns: torch.Tensor, counts: bool) -> dict:
    """The batch with ``key`` (and the dense counts, when a step reads them) cut to ``columns``."""
    part = {**batch, key: batch[key][:, columns]}
    if counts and batch["counts_ng"].layout == torch.strided:
        part["counts_ng"] = batch["counts_ng"][:, columns]
    return part


class ColumnGroupsMetric(Metric):
    """One fitting metric per column group, each fed only its group's columns; results are keyed
    ``"<group>/<name>"``. States live in the parts (their own ``dist_reduce_fx``)."""

    full_state_update = False
    higher_is_better = None
    is_differentiable = False

    def __init__(
        self, parts: Sequence[tuple[torch.Tensor, Metric, bool]], key: str = "x_ng"
    ) -> None:
        super().__init__()
        self.key = key
        self.columns = [columns for columns, _, _ in parts]
        self.reads_counts = [counts for _, _, counts in parts]
        self.parts = nn.ModuleList([metric for _, metric, _ in parts])

    def update(self, batch: Mapping[str, torch.Tensor]) -> None:
        parts: list[Metric] = list(self.parts)  # type: ignore[arg-type]
        device = batch[self.key].device
        for columns, counts, metric in zip(self.columns, self.reads_counts, parts, strict=True):
            metric.update(_columns(batch, self.key, columns.to(device), counts))

    def compute(self) -> dict[str, torch.Tensor]:
        parts: list[Metric] = list(self.parts)  # type: ignore[arg-type]
        return {
            f"{index}/{name}": value
            for index, metric in enumerate(parts)
            for name, value in metric.compute().items()
        }

    def merge_state(self, incoming: Any) -> None:
        for mine, theirs in zip(self.parts, incoming.parts, strict=True):
            mine.merge_state(theirs)  # type: ignore[operator]

    def reset(self) -> None:
        super().reset()
        for metric in self.parts:
            metric.reset()  # type: ignore[operator]


class ColumnGroupNormalization(FittableTransform):
    r"""Gene-wise normalizations of disjoint gene groups, each fitted on its own columns.

    .. math:: y_{c,G_k} = T_k(x_{c,G_k}) \quad \text{for each group } G_k

    Equal to applying each normalization to its column subset of the matrix (``adata[:, genes]``
    per group); genes of no group pass unchanged. A group's step may be any gene-wise transform
    (fitted or not); it sees the batch with ``key`` (and the dense counts) cut to its columns.
    """

    accepts_sparse = False

    def __init__(
        self, groups: Sequence[tuple[str, torch.Tensor, Transform]], key: str = "x_ng"
    ) -> None:
        super().__init__()
        self.key = key
        self.output_key = key
        self.group_names = [name for name, _, _ in groups]
        self.steps = nn.ModuleList([step for _, _, step in groups])
        for index, (_, columns, _) in enumerate(groups):
            self.register_buffer(f"columns_{index}", columns.to(torch.int64).clone())
        steps = self._steps()
        self.reads_counts = any(step.reads_counts for step in steps)
        clip = [step.clip_value for step in steps if step.clip_value is not None]
        self.clip_value = max(clip) if clip else None
        self.fitted = not self._fittable()

    def _steps(self) -> list[Transform]:
        return list(self.steps)  # type: ignore[arg-type]

    def _group_columns(self) -> list[torch.Tensor]:
        return [getattr(self, f"columns_{index}") for index in range(len(self.steps))]

    def _fittable(self) -> list[tuple[int, FittableTransform]]:
        return [(i, s) for i, s in enumerate(self._steps()) if isinstance(s, FittableTransform)]

    def fit_metric(self) -> ColumnGroupsMetric:
        columns = self._group_columns()
        parts = [(columns[i], step.fit_metric(), step.reads_counts) for i, step in self._fittable()]
        return ColumnGroupsMetric(parts, self.key)

    def _split(self, state: Mapping[str, torch.Tensor], part: int) -> dict[str, torch.Tensor]:
        prefix = f"{part}/"
        return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}

    def load_fitted(self, result: Mapping[str, torch.Tensor]) -> None:
        for part, (_, step) in enumerate(self._fittable()):
            step.load_fitted(self._split(result, part))
        self.fitted = True

    def fitted_state(self) -> dict[str, torch.Tensor]:
        return {
            f"{part}/{name}": value
            for part, (_, step) in enumerate(self._fittable())
            for name, value in step.fitted_state().items()
        }

    def restore_fitted(self, state: Mapping[str, torch.Tensor]) -> None:
        for part, (_, step) in enumerate(self._fittable()):
            step.restore_fitted(self._split(state, part))
        self.fitted = True

    def config(self) -> dict[str, Any]:
        return {
            "groups": [
                (name, type(step).__name__, step.config(), fingerprint(columns.tolist()))
                for name, step, columns in zip(
                    self.group_names, self._steps(), self._group_columns(), strict=True
                )
            ]
        }

    def forward(
        self, batch: Mapping[str, torch.Tensor], context: StepContext | None = None
    ) -> Batch:
        x_ng = batch[self.key]
        y_ng = x_ng.clone()
        for columns, step in zip(self._group_columns(), self._steps(), strict=True):
            part = _columns(batch, self.key, columns, step.reads_counts)
            y_ng[:, columns] = step(part, context)[self.key].to(y_ng.dtype)
        return {self.key: y_ng}

    def __repr__(self) -> str:
        groups = ", ".join(
            f"{name}={step!r}" for name, step in zip(self.group_names, self._steps(), strict=True)
        )
        return f"ColumnGroupNormalization({groups})"
