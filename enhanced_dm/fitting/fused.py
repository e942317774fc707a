"""The fitting pass of a moments metric after the standard per-cell steps, fused into one pass
over the stored counts.

The step-by-step pass (:func:`~enhanced_dm.fitting.driver.fitting_view` then ``metric.update``)
builds a CSR tensor per step (float32 counts, scaled counts, their log1p), each in fresh memory.
:class:`FusedLogMoments` makes the same float32 values with the same operations, in place in a
workspace reused across batches, and hands them to the metric as the last step would
(:class:`FusedFittingMetric`); the metric sums them as it sums any CSR batch, so the statistics
equal the step-by-step ones (``tests/fitting/test_fused.py`` pins 1e-12 relative). The
step-by-step pass stays the reference, and the pass for every other pipeline, metric, device or
layout.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Protocol, TypeVar, runtime_checkable

import numpy as np
import torch

from enhanced_dm.transforms import functional as F
from enhanced_dm.transforms.base import Pipeline, Transform
from enhanced_dm.transforms.densify import Densify
from enhanced_dm.transforms.log1p import Log1p

if TYPE_CHECKING:
    from enhanced_dm.transforms.normalize_total import NormalizeTotal

__all__ = ["FusedFittingMetric", "FusedLogMoments", "fused_update"]

StepT = TypeVar("StepT", bound=Transform)


@runtime_checkable
class FusedFittingMetric(Protocol):
    """A fitting metric whose ``update`` reads only ``batch[key]`` and ``batch[group_key]``
    (``fused_fitting``, as :class:`~enhanced_dm.fitting.moments.GroupedMomentsMetric`), so the
    fused pass may hand it the per-cell steps' output without running the steps."""

    key: str
    group_key: str | None
    fused_fitting: bool

    def update(self, batch: Mapping[str, torch.Tensor]) -> None: ...


class FusedLogMoments:
    r"""``metric.update(view(batch))`` for ``view = densify -> [normalize_total] -> [log1p]``, in
    one pass over the stored counts :math:`c_{cg}` of a CPU CSR batch:

    .. math:: y_{cg} = \ln\!\left(1 + \operatorname{f32}(c_{cg}) \cdot s_c\right), \qquad
              s_c = \frac{\text{target\_sum}}{t_c} \ (0 \text{ if } t_c = 0)

    in float32 with the kernels' operations
    (:func:`~enhanced_dm.transforms.functional.normalize_total`; numpy's ``log1p``, as
    :func:`~enhanced_dm.transforms.functional.log1p` on the CPU). The workspace grows to the
    largest batch (four bytes per stored value of one batch), so memory does not depend on the
    number of cells.
    """

    def __init__(
        self,
        metric: FusedFittingMetric,
        normalize_total: NormalizeTotal | None,
        log1p: bool,
    ) -> None:
        self.metric = metric
        self.normalize_total = normalize_total
        self.log1p = log1p
        self._values32 = np.empty(0, dtype=np.float32)

    def __call__(self, batch: Mapping[str, torch.Tensor]) -> bool:
        """Update the metric with ``batch``; False (nothing done) when the batch is not a CPU CSR
        batch with numpy-readable values, which the caller then runs step by step."""
        counts = batch["counts_ng"]
        if counts.layout != torch.sparse_csr or counts.device.type != "cpu":
            return False
        try:
            stored = counts.values().numpy()
        except TypeError:  # a dtype numpy lacks (bfloat16)
            return False
        if stored.size > self._values32.size:  # grows to the largest batch, never shrinks
            self._values32 = np.empty(stored.size, dtype=np.float32)
        values32 = self._values32[: stored.size]
        np.copyto(values32, stored, casting="unsafe")  # densify: values.to(float32)
        if self.normalize_total is not None:
            per_value = np.repeat(self._scale_n(batch), np.diff(counts.crow_indices().numpy()))
            np.multiply(values32, per_value, out=values32)  # float32 product, as the kernel's
        if self.log1p:
            np.log1p(values32, out=values32)  # F.log1p's CPU kernel (numpy's, as scanpy's)
        x_ng = F.map_stored_values(counts, torch.from_numpy(values32))
        self.metric.update({**batch, "x_ng": x_ng})
        return True

    def _scale_n(self, batch: Mapping[str, torch.Tensor]) -> np.ndarray:
        """Each cell's factor, as :func:`~enhanced_dm.transforms.functional.normalize_total`
        computes it (the same function)."""
        assert self.normalize_total is not None
        total_n = batch[self.normalize_total.total_key]
        return F.total_count_factors(total_n, self.normalize_total.target_sum).numpy()


def fused_update(view: Pipeline, metric: object) -> FusedLogMoments | None:
    """The fused pass for ``metric`` after ``view``, or None when the step-by-step pass must run.

    Fused: a :class:`FusedFittingMetric` reading ``x_ng`` (and group codes no step writes),
    after exactly ``densify -> [normalize_total] -> [log1p]`` on ``x_ng``
    (the standard per-cell steps; their exact classes, since a subclass may compute otherwise).
    Anything else (counts-slot steps, per_cell-slot steps, a combined-group step, another
    metric) runs step by step.
    """
    # Imported here: transforms.normalize_total imports its fitting metric from this package.
    from enhanced_dm.transforms.normalize_total import NormalizeTotal

    if not isinstance(metric, FusedFittingMetric) or not metric.fused_fitting:
        return None
    if metric.key != "x_ng":
        return None
    steps = [step for _, step in view.named_transforms()]
    densify = _take_exact(steps, Densify)
    normalize_total = _take_exact(steps, NormalizeTotal)
    log1p = _take_exact(steps, Log1p)
    if densify is None or steps or metric.group_key in ("x_ng", "counts_ng"):
        return None
    if normalize_total is not None and (
        normalize_total.key != "x_ng" or not normalize_total.fitted
    ):
        return None
    if log1p is not None and log1p.key != "x_ng":
        return None
    return FusedLogMoments(metric, normalize_total, log1p is not None)


def _take_exact(steps: list[Transform], kind: type[StepT]) -> StepT | None:
    """Remove and return the first of ``steps`` when it is of exactly class ``kind``."""
    if not steps or type(steps[0]) is not kind:
        return None
    step = steps.pop(0)
    assert isinstance(step, kind)
    return step
