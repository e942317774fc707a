"""Fit every fittable transform of a pipeline by streaming passes over the train split."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

import torch
from lightning.fabric.utilities.apply_func import move_data_to_device
from tqdm.auto import tqdm

from enhanced_dm.errors import FittingError
from enhanced_dm.transforms.base import FittableTransform, Pipeline
from enhanced_dm.transforms.densify import counts_left_sparse

__all__ = ["fit_pipeline", "fitted_states", "load_fitted_states"]

FittedState = dict[str, dict[str, torch.Tensor]]


def fit_pipeline(
    pipeline: Pipeline,
    train_batches: Callable[[], Iterable[Mapping[str, torch.Tensor]]],
    device: torch.device | str = "cpu",
    progress: bool = True,
) -> FittedState:
    """Fit the pipeline's unfitted transforms in order, one streaming pass each.

    Each transform's metric sees the batch as the transforms before it (already fitted) leave it,
    so a z-score after log1p is fitted on log values (``counts_ng`` stays sparse unless one of
    those steps reads the dense counts: :func:`~enhanced_dm.transforms.densify.counts_left_sparse`).
    ``train_batches()`` must yield every train cell of this rank once; the metrics' ``compute()``
    merges ranks. Returns the fitted state of
    every fittable transform, keyed by transform name.
    """
    pipeline.to(device)
    for index, (name, transform) in enumerate(pipeline.named_transforms()):
        if not isinstance(transform, FittableTransform) or transform.fitted:
            continue
        metric = transform.fit_metric().to(device)
        seen = 0
        batches = tqdm(train_batches(), desc=f"fitting {name}", disable=not progress, leave=False)
        steps = [step for _, step in pipeline.named_transforms()][: index + 1]
        with torch.no_grad(), counts_left_sparse(steps):
            for batch in batches:
                inputs = pipeline(move_data_to_device(batch, device), stop_before=index)
                metric.update(inputs)
                seen += 1
        if seen == 0 and not torch.distributed.is_initialized():
            raise FittingError(f"cannot fit {name}: the train split yielded no batch")
        transform.load_fitted(metric.compute())
    return fitted_states(pipeline)


def fitted_states(pipeline: Pipeline) -> FittedState:
    """Fitted state of every fittable transform, keyed by name (CPU tensors)."""
    return {
        name: transform.fitted_state()
        for name, transform in pipeline.named_transforms()
        if isinstance(transform, FittableTransform)
    }


def load_fitted_states(
    pipeline: Pipeline, states: Mapping[str, Mapping[str, torch.Tensor]]
) -> None:
    """Load states produced by :func:`fitted_states` (cache or checkpoint) into the pipeline."""
    for name, transform in pipeline.named_transforms():
        if isinstance(transform, FittableTransform):
            if name not in states:
                raise FittingError(f"saved statistics lack transform {name!r}")
            transform.restore_fitted(states[name])
