"""Fit every fittable transform of a pipeline by streaming passes over the train split."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from contextlib import closing

import torch
from lightning.fabric.utilities.apply_func import move_data_to_device
from tqdm.auto import tqdm

from enhanced_dm.errors import FittingError
from enhanced_dm.fitting.fused import fused_update
from enhanced_dm.fitting.prefetch import prefetched
from enhanced_dm.transforms.base import FittableTransform, Pipeline, Transform
from enhanced_dm.transforms.context import StepContext
from enhanced_dm.transforms.densify import Densify

__all__ = ["fit_pipeline", "fitting_view", "fitted_states", "load_fitted_states"]

FittedState = dict[str, dict[str, torch.Tensor]]


def fit_pipeline(
    pipeline: Pipeline,
    train_batches: Callable[[], Iterable[Mapping[str, torch.Tensor]]],
    device: torch.device | str = "cpu",
    progress: bool = True,
    seed: int = 0,
    global_rank: int = 0,
) -> FittedState:
    """Fit the pipeline's unfitted transforms in order, one streaming pass each.

    Each transform's metric sees the batch as the transforms before it (already fitted) leave it,
    so a z-score after log1p is fitted on log values. The passes run with
    ``StepContext(stage="fit_stats")`` and the pipeline in ``eval()`` mode: no augmentation and no
    running state reaches the statistics. ``counts_ng`` stays sparse unless one of the steps up to
    the fitted one reads the dense counts (:func:`fitting_view`). After the standard per-cell
    steps a moments metric is updated in one fused pass over the stored counts
    (:func:`~enhanced_dm.fitting.fused.fused_update`, equal to the step-by-step pass).
    ``train_batches()`` must yield every train cell of this rank once; the metrics' ``compute()``
    merges ranks. Returns the fitted state of every fittable transform, keyed by transform name.
    """
    pipeline.to(device)
    was_training = pipeline.training
    pipeline.eval()
    context = StepContext("fit_stats", seed=seed, global_rank=global_rank)
    try:
        for index, (name, transform) in enumerate(pipeline.named_transforms()):
            if not isinstance(transform, FittableTransform) or transform.fitted:
                continue
            metric = transform.fit_metric().to(device)
            seen = 0
            view = fitting_view(pipeline, index)
            fused = fused_update(view, metric)
            # closing: an error mid-pass stops the reading thread now, not when collected
            with closing(prefetched(train_batches())) as ahead, torch.no_grad():
                batches = tqdm(ahead, desc=f"fitting {name}", disable=not progress, leave=False)
                for batch in batches:
                    batch = move_data_to_device(batch, device)
                    if fused is None or not fused(batch):
                        metric.update(view(batch, context))
                    seen += 1
            if seen == 0 and not torch.distributed.is_initialized():
                raise FittingError(f"cannot fit {name}: the train split yielded no batch")
            transform.load_fitted(metric.compute())
    finally:
        pipeline.train(was_training)
    return fitted_states(pipeline)


def fitting_view(pipeline: Pipeline, index: int) -> Pipeline:
    """The steps before ``index``, sharing the pipeline's modules, as the fitting pass of step
    ``index`` needs them: ``counts_ng`` is left sparse when neither those steps nor step
    ``index`` (its metric) read the dense counts; densifying them would be a third of the pass
    for nothing. The live pipeline is not touched."""
    steps = pipeline.named_transforms()
    densify_at = next((i for i, (_, step) in enumerate(steps) if isinstance(step, Densify)), 0)
    # Steps before densify (the counts slot) read the CSR counts, not the dense ones.
    dense_counts = any(step.reads_counts for _, step in steps[densify_at + 1 : index + 1])
    view: list[tuple[str, Transform]] = []
    for name, step in steps[:index]:
        if isinstance(step, Densify) and step.dense_counts and not dense_counts:
            step = Densify(dense_counts=False)
        view.append((name, step))
    return Pipeline(view)


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
