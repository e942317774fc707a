"""The transform contract and the pipeline that chains transforms over a batch dict."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from enhanced_dm.csr import shared_csr_structure

if TYPE_CHECKING:
    from enhanced_dm.transforms.context import StepContext

__all__ = ["FittableTransform", "Pipeline", "Transform"]

Batch = dict[str, torch.Tensor]


class Transform(nn.Module):
    """A step of the pipeline: reads keys of the batch and returns only the keys it writes.

    Subclasses implement ``forward(batch, context=None) -> dict``; ``context`` is the
    :class:`~enhanced_dm.transforms.context.StepContext` (stage, seed, epoch, rank, batch index),
    which steps without randomness or stage-dependent behaviour ignore. ``output_key`` names the
    tensor that monitors watch (and, with ``output_keys``, the batch keys the step writes);
    ``also_monitored`` names further keys it writes that monitors summarize (reported as
    ``"<step>/<key>"``); ``clip_value`` (when not None) lets monitors count clipped values; ``monitored=False``
    marks steps that change only the layout, whose statistics would repeat the previous step's;
    ``accepts_sparse=True`` lets a sparse CSR ``x_ng`` reach the step (and its fitting metric);
    ``reads_counts=False`` declares that neither the step nor its fitting metric reads the dense
    ``counts_ng``, so a fitting pass that ends at such steps skips densifying the counts (the
    safe default is True).
    """

    output_key: str = "x_ng"
    also_monitored: tuple[str, ...] = ()
    clip_value: float | None = None
    monitored: bool = True
    accepts_sparse: bool = False
    reads_counts: bool = True
    reads_log_expression: bool = False

    def forward(
        self, batch: Mapping[str, torch.Tensor], context: StepContext | None = None
    ) -> Batch:  # pragma: no cover - abstract
        raise NotImplementedError

    @property
    def output_keys(self) -> tuple[str, ...]:
        """Batch keys this step writes (conflict checks between components)."""
        return (self.output_key,)

    def config(self) -> dict[str, Any]:
        """Options that change the fitted statistics; part of the statistics cache key."""
        return {}


class FittableTransform(Transform):
    """A transform whose statistics are fitted on the train split before training.

    ``fit_metric()`` returns a fresh ``torchmetrics.Metric`` whose ``update(batch)`` receives the
    batch as it reaches this transform and whose ``compute()`` returns a dict of tensors;
    ``load_fitted(result)`` turns that result into buffers. ``fitted_state()`` /
    ``restore_fitted(state)`` save and restore the buffers themselves (statistics cache,
    checkpoints), so restoring never needs the metric.
    """

    fitted: bool = False

    def fit_metric(self) -> Any:  # pragma: no cover - abstract
        raise NotImplementedError

    def load_fitted(self, result: Mapping[str, torch.Tensor]) -> None:  # pragma: no cover
        raise NotImplementedError

    def fitted_state(self) -> dict[str, torch.Tensor]:
        """The fitted buffers (CPU copies)."""
        return {name: buffer.detach().cpu().clone() for name, buffer in self.named_buffers()}

    def restore_fitted(self, state: Mapping[str, torch.Tensor]) -> None:
        """Copy buffers saved by :meth:`fitted_state` back (shapes must match)."""
        buffers = dict(self.named_buffers())
        for name, value in state.items():
            if name not in buffers or buffers[name].shape != value.shape:
                raise ValueError(
                    f"{type(self).__name__}: saved statistic {name!r} does not fit "
                    "this transform (another configuration or gene space?)"
                )
            buffers[name].copy_(value)
        self.fitted = True


class Pipeline(nn.ModuleList):
    """Transforms applied in order; each one's output keys are merged into the batch.

    The input dict is never mutated: a new dict is returned. ``on_output(name, transform, out)`` is
    called after each step (monitors hook in there).
    """

    def __init__(self, transforms: Iterable[tuple[str, Transform]] = ()) -> None:
        super().__init__()
        self.names: list[str] = []
        for name, transform in transforms:
            self.add(name, transform)

    def add(self, name: str, transform: Transform) -> None:
        """Append a named transform (names must be unique: they key statistics and the cache)."""
        if name in self.names:
            raise ValueError(f"a transform named {name!r} is already in the pipeline")
        self.names.append(name)
        self.append(transform)

    def named_transforms(self) -> list[tuple[str, Transform]]:
        """(name, transform) pairs in pipeline order."""
        transforms: list[Transform] = list(self)  # type: ignore[arg-type]
        return list(zip(self.names, transforms, strict=True))

    def forward(
        self,
        batch: Mapping[str, torch.Tensor],
        context: StepContext | None = None,
        on_output: Callable[[str, Transform, Batch], None] | None = None,
        stop_before: int | None = None,
    ) -> Batch:
        """Run the transforms (all, or those before index ``stop_before``) over ``batch``."""
        result = dict(batch)
        with shared_csr_structure():  # counts and x_ng of a batch share one CSR structure
            for index, (name, transform) in enumerate(self.named_transforms()):
                if stop_before is not None and index >= stop_before:
                    break
                out = transform(result, context)
                result.update(out)
                if on_output is not None:
                    on_output(name, transform, out)
        return result

    def __repr__(self) -> str:
        steps = ", ".join(f"{name}={transform!r}" for name, transform in self.named_transforms())
        return f"Pipeline({steps})"
