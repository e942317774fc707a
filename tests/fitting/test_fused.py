"""The fused fitting pass (densify -> total-count -> log1p -> moments in one pass over the stored
counts) gives the step-by-step statistics, and every other pipeline falls back to the steps."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pytest
import torch

from enhanced_dm.data import CellStore
from enhanced_dm.fitting import GroupedMomentsMetric, MedianTotalMetric, fit_pipeline
from enhanced_dm.fitting import driver as driver_module
from enhanced_dm.fitting.driver import fitting_view
from enhanced_dm.fitting.fused import FusedLogMoments, fused_update
from enhanced_dm.transforms import Densify, Log1p, NormalizeTotal, ZScore
from enhanced_dm.transforms import functional as F
from enhanced_dm.transforms.base import Batch, Pipeline, Transform
from enhanced_dm.transforms.context import StepContext
from tests.helpers import shared_data

PBMC = "singlecell/pbmc68k_reduced_counts.h5ad"
WU2020 = "singlecell/wu2020_tcells_counts.h5ad"
STATES = ("count", "sum_g", "sumsq_g", "count_b", "sum_bg", "sumsq_bg")


def _batches(store: CellStore, n_batches: int) -> list[dict[str, torch.Tensor]]:
    return [store.read(rows) for rows in np.array_split(np.arange(store.n_obs), n_batches)]


def _pipeline(store: CellStore, target_sum: float | str, log1p: bool, grouped: bool) -> Pipeline:
    steps: list[tuple[str, Transform]] = [
        ("densify", Densify()),
        ("normalize_total", NormalizeTotal(target_sum)),
    ]
    if log1p:
        steps.append(("log1p", Log1p()))
    n_groups = len(store.categories["batch"]) if grouped else 0
    group_key = "batch_n" if grouped else None
    steps.append(("z_score", ZScore(store.n_genes, n_groups, group_key)))
    return Pipeline(steps)


def _assert_states_equal(fused: GroupedMomentsMetric, stepwise: GroupedMomentsMetric) -> None:
    for name in STATES:
        expected = getattr(stepwise, name)
        torch.testing.assert_close(getattr(fused, name), expected, rtol=1e-12, atol=0.0)
    assert float(stepwise.sum_g.sum()) > 0 and float(stepwise.sumsq_g.sum()) > 0


@pytest.mark.parametrize(
    ("path", "target_sum", "log1p", "grouped"),
    [
        (PBMC, 1e4, True, False),
        (PBMC, "median", True, False),
        (PBMC, 1e4, False, False),
        (WU2020, 1e4, True, True),
        (WU2020, "median", True, True),
    ],
)
def test_fused_moments_equal_the_step_by_step_moments(
    path: str, target_sum: float | str, log1p: bool, grouped: bool
) -> None:
    store = CellStore(shared_data(path), obs_columns={"batch": "sample"} if grouped else None)
    batches = _batches(store, 5)
    if grouped:  # a missing label counts towards the global statistics only
        batches[1]["batch_n"] = batches[1]["batch_n"].clone()
        batches[1]["batch_n"][::3] = -1
    batches[2]["total_counts_n"] = batches[2]["total_counts_n"].clone()
    batches[2]["total_counts_n"][:2] = 0  # cells with no counts stay zero (no NaN)
    pipeline = _pipeline(store, target_sum, log1p, grouped)
    if target_sum == "median":  # fit the median total first: the fused pass reads its target
        fit_pipeline(Pipeline(pipeline.named_transforms()[:2]), lambda: batches, progress=False)
    index = len(pipeline) - 1
    view = fitting_view(pipeline, index)
    zscore = pipeline[index]
    assert isinstance(zscore, ZScore)
    stepwise, fused_metric = zscore.fit_metric(), zscore.fit_metric()
    fused = fused_update(view, fused_metric)
    assert isinstance(fused, FusedLogMoments)
    context = StepContext("fit_stats", seed=0)
    for batch in batches:
        stepwise.update(view(batch, context))
        assert fused(batch)
    _assert_states_equal(fused_metric, stepwise)
    if grouped:
        assert float(stepwise.count_b.sum()) < float(stepwise.count)  # the -1 codes were left out


def test_fit_pipeline_takes_the_fused_pass_and_fits_what_the_steps_fit(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    store = CellStore(shared_data(WU2020), obs_columns={"batch": "sample"})
    batches = _batches(store, 3)
    calls = {"fused": 0}
    original = FusedLogMoments.__call__

    def counting(self: FusedLogMoments, batch: Mapping[str, torch.Tensor]) -> bool:
        calls["fused"] += 1
        return original(self, batch)

    monkeypatch.setattr(FusedLogMoments, "__call__", counting)
    fused_states = fit_pipeline(
        _pipeline(store, "median", True, True), lambda: batches, progress=False
    )
    assert calls["fused"] == len(batches)  # the z-score pass; the median pass runs the steps
    monkeypatch.setattr(driver_module, "fused_update", lambda view, metric: None)
    stepwise_states = fit_pipeline(
        _pipeline(store, "median", True, True), lambda: batches, progress=False
    )
    assert calls["fused"] == len(batches)
    for name, state in stepwise_states.items():
        for key, value in state.items():
            torch.testing.assert_close(fused_states[name][key], value, rtol=1e-6, atol=0.0)


class CountsNoise(Transform):
    """A counts-slot step: it changes the stored counts before densify."""

    def forward(self, batch: Mapping[str, torch.Tensor], context: object = None) -> Batch:
        counts = batch["counts_ng"]
        return {
            "counts_ng": torch.sparse_csr_tensor(
                counts.crow_indices(), counts.col_indices(), counts.values() * 2, counts.shape
            )
        }


class HalveTotal(NormalizeTotal):
    """A subclass may compute otherwise: the fused pass must not stand in for it."""

    def forward(self, batch: Mapping[str, torch.Tensor], context: object = None) -> Batch:
        x_ng = super().forward(batch)["x_ng"]
        return {"x_ng": F.map_stored_values(x_ng, x_ng.values() * 0.5)}


class PerCellStep(Transform):
    """A per_cell-slot step after log1p (regress-out, HVG, ...): here, doubling x_ng."""

    accepts_sparse = True
    reads_counts = False

    def forward(self, batch: Mapping[str, torch.Tensor], context: object = None) -> Batch:
        x_ng = batch["x_ng"]
        return {"x_ng": F.map_stored_values(x_ng, x_ng.values() * 2)}


@pytest.mark.parametrize(
    "steps",
    [
        [("noise", CountsNoise()), ("densify", Densify()), ("log1p", Log1p())],
        [("densify", Densify()), ("normalize_total", HalveTotal()), ("log1p", Log1p())],
        [("densify", Densify()), ("log1p", Log1p()), ("normalize_total", NormalizeTotal())],
        [("densify", Densify()), ("log1p", Log1p()), ("per_cell", PerCellStep())],
    ],
    ids=["counts-slot step", "subclassed step", "other order", "per_cell step"],
)
def test_other_pipelines_fall_back_to_the_steps(steps: list[tuple[str, Transform]]) -> None:
    store = CellStore(shared_data(PBMC))
    batches = _batches(store, 2)
    pipeline = Pipeline([*steps, ("z_score", ZScore(store.n_genes))])
    view = fitting_view(pipeline, len(pipeline) - 1)
    assert fused_update(view, GroupedMomentsMetric(store.n_genes)) is None
    fit_pipeline(pipeline, lambda: batches, progress=False)  # the steps still fit it
    expected = GroupedMomentsMetric(store.n_genes)
    for batch in batches:
        expected.update(view(batch, StepContext("fit_stats", seed=0)))
    mean_g = expected.compute()["mean_g"].to(torch.float32)
    torch.testing.assert_close(pipeline[len(pipeline) - 1].center_g, mean_g)


def test_metrics_without_the_stored_values_hook_and_dense_batches_use_the_steps() -> None:
    store = CellStore(shared_data(PBMC))
    view = Pipeline([("densify", Densify()), ("normalize_total", NormalizeTotal())])
    assert fused_update(view, MedianTotalMetric()) is None
    assert fused_update(view, GroupedMomentsMetric(store.n_genes, key="counts_ng")) is None
    fused = fused_update(view, GroupedMomentsMetric(store.n_genes))
    assert fused is not None
    batch = store.read(np.arange(10))
    dense = {**batch, "counts_ng": batch["counts_ng"].to_dense()}
    assert not fused(dense)  # the driver then runs the steps for this batch
    assert float(fused.metric.count) == 0  # type: ignore[attr-defined]
