"""Seed-compatible collate-style loaders apply the same fitted pipeline as the DataModule, report
statistics over every DataLoader worker, pickle, and load a DataModule's state without fitting."""

from __future__ import annotations

import copy
import gc
import os
import pickle
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

import enhanced_dm.loaders
from enhanced_dm import (
    BaseEnhancedDataModule,
    BaseEnhancedLoader,
    ConfigError,
    DataFileError,
    FittingError,
    FullVirtualCellLoader,
    HierarchicalDataLoader,
    MemoryDataLoader,
    MultiScaleDataLoader,
    RegulatoryDataLoader,
    ResourceDataLoader,
    StochasticDataLoader,
    TemporalDataLoader,
)
from enhanced_dm.datasets import HSMM_TIMECOURSE_FILE, bundled_path
from tests.helpers import shared_data

PBMC = "singlecell/pbmc68k_reduced_counts.h5ad"


@dataclass(frozen=True)
class SharedFile:
    """A file under ``../shared/data``, resolved when the test runs (absent: skipped)."""

    relative: str


# One line per loader: its class and the options of a small, fast case (a few hundred cells).
LOADERS: list[tuple[type[BaseEnhancedLoader], dict[str, Any]]] = [
    (BaseEnhancedLoader, {"data": SharedFile(PBMC), "cell_type_key": "cell_type"}),
    (HierarchicalDataLoader, {"data": SharedFile(PBMC), "num_pathways": 30}),
    (
        RegulatoryDataLoader,
        {
            "data": SharedFile(PBMC),
            "interaction_matrix_file": SharedFile("networks/progeny_human_top500.tsv"),
        },
    ),
    (ResourceDataLoader, {"data": SharedFile(PBMC), "energy_dim": 8, "nutrient_dim": 8}),
    (TemporalDataLoader, {"data": bundled_path(HSMM_TIMECOURSE_FILE), "time_key": "Hours"}),
    (StochasticDataLoader, {"data": SharedFile(PBMC)}),
    (
        MemoryDataLoader,
        {
            "data": SharedFile(PBMC),
            "memory_dim": 16,
            "memory_size": 64,
            "state_key": "phase",
            "cell_type_key": "cell_type",
        },
    ),
    (MultiScaleDataLoader, {"data": SharedFile(PBMC), "cellular_scale_dim": 16}),
    (
        FullVirtualCellLoader,
        {
            "data": SharedFile(PBMC),
            "time_key": "S_score",
            "memory_dim": 16,
            "memory_size": 64,
            "cellular_scale_dim": 16,
            "energy_dim": 8,
            "nutrient_dim": 8,
        },
    ),
]
COMMON: dict[str, Any] = {"val_fraction": 0.2, "progress": False, "seed": 0}
CELLS = [0, 3, 57, 120, 200, 270]  # fixed cells, present in every case's data


def each_loader() -> pytest.MarkDecorator:
    return pytest.mark.parametrize(
        ("loader_class", "options"), LOADERS, ids=[cls.__name__ for cls, _ in LOADERS]
    )


def resolved(options: dict[str, Any]) -> dict[str, Any]:
    """The options with shared files as paths, plus :data:`COMMON`."""
    paths = {
        key: str(shared_data(value.relative)) if isinstance(value, SharedFile) else value
        for key, value in options.items()
    }
    return {**COMMON, **paths}


@contextmanager
def quiet() -> Iterator[None]:
    """Small cases trim some widths (embedding, PCA) with a warning: not what is tested here."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        yield


def make_loader(loader_class: type[BaseEnhancedLoader], options: dict[str, Any]) -> Any:
    with quiet():
        return loader_class(None, **resolved(options))


def dense(value: Any) -> Any:
    return value.to_dense() if torch.is_tensor(value) and value.layout != torch.strided else value


def assert_same_batches(got: dict[str, Any], expected: dict[str, Any]) -> None:
    """Every key of both, floats within 1e-6, everything else equal."""
    assert got.keys() == expected.keys()
    for key in expected:
        if torch.is_tensor(expected[key]):
            torch.testing.assert_close(
                dense(got[key]), dense(expected[key]), atol=1e-6, rtol=0, equal_nan=True, msg=key
            )
        else:
            assert got[key] == expected[key], key


def direct(loader: BaseEnhancedLoader, cells: list[int]) -> dict[str, Any]:
    """What the DataModule itself gives for these cells."""
    dm = loader.datamodule
    return dm.normalize(dm.store.read(cells))


def cells_seen(stats: dict[str, dict[str, float]]) -> set[float]:
    return {entry["cells_seen"] for entry in stats.values()}


# --------------------------------------------------------------------------------- the API
def test_every_loader_is_a_base_enhanced_loader() -> None:
    names = [name for name in enhanced_dm.loaders.__all__ if name.endswith("Loader")]
    classes = [getattr(enhanced_dm.loaders, name) for name in names]
    assert all(issubclass(cls, BaseEnhancedLoader) for cls in classes)
    assert {cls.__name__ for cls, _ in LOADERS} == set(names), "a loader without a test case"
    assert not hasattr(enhanced_dm.loaders, "EnhancedCollateLoader")


@each_loader()
def test_collate_output_equals_the_datamodule(loader_class, options) -> None:
    loader = make_loader(loader_class, options)
    out = loader([loader.dataset()[cell] for cell in CELLS])
    assert_same_batches(out, direct(loader, CELLS))


@each_loader()
def test_worker_statistics_count_every_cell_served(loader_class, options) -> None:
    loader = make_loader(loader_class, options)
    dataset = loader.dataset()
    loader([dataset[cell] for cell in CELLS])  # counted here, before the workers are forked
    workers = DataLoader(dataset, batch_size=64, collate_fn=loader, num_workers=2)
    served = sum(len(batch["cell_index_n"]) for batch in workers)
    assert served == len(dataset)
    own_monitor = loader.datamodule.monitor
    stats = loader.get_normalization_stats()
    assert stats and cells_seen(stats) == {served + len(CELLS)}
    assert loader.datamodule.monitor is own_monitor  # the merged copy was only lent
    # component reports read the same merged monitors
    for component in loader.datamodule.components:
        report = getattr(loader, f"get_{component.name}_stats")()
        for label, step in component.output_steps().items():
            if step in stats:
                assert report[label]["cells_seen"] == served + len(CELLS), label


@each_loader()
def test_every_stats_method_returns_a_dict(loader_class, options) -> None:
    loader = make_loader(loader_class, options)
    loader([loader.dataset()[cell] for cell in CELLS])
    methods = {
        name
        for name in dir(loader.datamodule)
        if name.startswith("get_") and name.endswith("_stats")
    }
    assert "get_normalization_stats" in methods
    assert {f"get_{c.name}_stats" for c in loader.datamodule.components} <= methods
    for name in sorted(methods):
        assert isinstance(getattr(loader, name)(), dict), name


@each_loader()
def test_a_loader_from_a_datamodule_state_does_not_fit(loader_class, options, monkeypatch):
    dm = loader_class.datamodule_class(**resolved(options))
    with quiet():
        dm.setup("fit")

    def no_fitting(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("a loader built from a state ran a fitting pass")

    monkeypatch.setattr("enhanced_dm.datamodules.base.fit_or_load", no_fitting)
    with quiet():
        loader = loader_class(None, state=dm.state_dict(), **resolved(options))
    out = loader([loader.dataset()[cell] for cell in CELLS])
    assert_same_batches(out, dm.normalize(dm.store.read(CELLS)))


def pbmc_loader(**options: Any) -> BaseEnhancedLoader:
    return BaseEnhancedLoader(data=shared_data(PBMC), **{**COMMON, **options})


def test_a_state_of_other_fitted_steps_is_refused() -> None:
    state = pbmc_loader(normalization_type="z_score").datamodule.state_dict()
    with pytest.raises(FittingError, match="robust"):
        pbmc_loader(normalization_type="robust", state=state)


# ----------------------------------------------------------------------- worker statistics


def test_worker_statistics_equal_those_of_one_process() -> None:
    one, many = pbmc_loader(), pbmc_loader()
    list(DataLoader(one.dataset(), batch_size=50, collate_fn=one))
    list(DataLoader(many.dataset(), batch_size=50, collate_fn=many, num_workers=2))
    expected, got = one.get_normalization_stats(), many.get_normalization_stats()
    assert got.keys() == expected.keys()
    for step in expected:
        # sums added in another order; the variance's cancellation leaves ~1e-7 relative
        assert got[step] == pytest.approx(expected[step], rel=1e-6, abs=1e-9), step


def test_reset_clears_what_persistent_workers_reported() -> None:
    loader = pbmc_loader()
    workers = DataLoader(
        loader.dataset(), batch_size=100, collate_fn=loader, num_workers=2, persistent_workers=True
    )
    n_cells = len(loader.dataset())
    list(workers)
    assert cells_seen(loader.get_normalization_stats()) == {n_cells}
    loader.reset_normalization_stats()
    assert loader.get_normalization_stats() == {}
    list(workers)  # the same worker processes, which counted the first pass
    assert cells_seen(loader.get_normalization_stats()) == {n_cells}
    loader([loader.dataset()[cell] for cell in CELLS])
    assert cells_seen(loader.get_normalization_stats()) == {n_cells + len(CELLS)}


def test_statistics_not_merged_across_workers_say_so() -> None:
    loader = TemporalDataLoader(
        data=bundled_path(HSMM_TIMECOURSE_FILE),
        time_key="Hours",
        sequence_mode=True,
        max_sequence_length=16,
        batch_size=4,
        **COMMON,
    )
    dataset = loader.dataset()
    loader([dataset[rows] for rows in next(iter(loader.batch_sampler()))])
    assert "not_aggregated" not in loader.get_temporal_stats()
    workers = DataLoader(
        dataset, batch_sampler=loader.batch_sampler("val"), collate_fn=loader, num_workers=2
    )
    list(workers)
    stats = loader.get_temporal_stats()
    assert list(stats["not_aggregated"]) == ["sequences_served"]
    assert stats["sequences_served"]["batches"] == 1  # the main process's only


def test_worker_files_stay_in_a_temporary_directory_removed_with_the_loader() -> None:
    loader = pbmc_loader()
    list(DataLoader(loader.dataset(), batch_size=100, collate_fn=loader, num_workers=2))
    directory = loader._worker_states.directory
    assert len(os.listdir(directory)) == 2  # one file per worker, whatever the batch count
    assert copy.deepcopy(loader)._worker_states.directory != directory  # workers of its own
    unpickled = pickle.loads(pickle.dumps(loader))
    del loader
    gc.collect()
    assert not os.path.exists(directory)
    assert unpickled.get_normalization_stats() == {}  # its own batches: the owner's are gone


@pytest.mark.parametrize(
    "context", ["fork", pytest.param("spawn", marks=pytest.mark.slow)], ids=str
)
def test_the_loader_pickles_into_workers(context: str) -> None:
    loader = pbmc_loader()
    restored = pickle.loads(pickle.dumps(loader))
    assert_same_batches(
        restored([restored.dataset()[cell] for cell in CELLS]), direct(loader, CELLS)
    )
    expected = direct(loader, list(range(len(loader.dataset()))))["x_ng"]
    loader.reset_normalization_stats()
    workers = DataLoader(
        loader.dataset(),
        batch_size=100,
        collate_fn=loader,
        num_workers=2,
        multiprocessing_context=context,
    )
    x_ng = torch.cat([batch["x_ng"] for batch in workers])
    torch.testing.assert_close(x_ng, expected, atol=1e-6, rtol=0)
    assert cells_seen(loader.get_normalization_stats()) == {len(x_ng)}


# ------------------------------------------------------------------------- the seed API
def test_collate_loader_matches_the_datamodule() -> None:
    options = dict(
        data=shared_data(PBMC), cell_type_key="cell_type", val_fraction=0.0, progress=False
    )
    loader = BaseEnhancedLoader(
        cfg=None,
        normalization_type="z_score",
        per_gene_normalization=True,
        per_cell_normalization=True,
        robust_normalization=False,
        quantile_normalization=False,
        **options,
    )
    dm = BaseEnhancedDataModule(**options)
    dm.setup("predict")
    expected = torch.cat([dm.normalize(b)["x_ng"] for b in dm.predict_dataloader()])

    batches = list(DataLoader(loader.dataset(), batch_size=100, collate_fn=loader))
    collected = torch.cat([batch["x_ng"] for batch in batches])
    assert torch.allclose(collected, expected, atol=1e-6)
    assert batches[0]["cell_type_n"].dtype == torch.int64

    # raw count vectors with labels are accepted too
    row = dm.store.read([4])["counts_ng"].to_dense()[0]
    label = dm.categories["cell_type"][int(dm.store.read([4])["cell_type_n"])]
    single = loader([{"counts": row.numpy(), "cell_type": label}])
    assert torch.allclose(single["x_ng"][0], expected[4], atol=1e-5)

    stats = loader.get_normalization_stats()
    assert stats["z_score"]["cells_seen"] == 701
    loader.reset_normalization_stats()
    assert loader.get_normalization_stats() == {}


def test_collate_loader_refuses_wrong_gene_count_and_missing_data() -> None:
    loader = BaseEnhancedLoader(data=shared_data(PBMC), progress=False)
    with pytest.raises(ConfigError, match="genes"):
        loader([np.zeros(3)])
    with pytest.raises(DataFileError, match="item 0"):
        loader([np.full(len(loader.var_names), 0.5)])  # the data are counts: fractions refused
    with pytest.raises(DataFileError, match="negative"):
        loader([-np.ones(len(loader.var_names))])
    with pytest.raises(ConfigError, match="needs data="):
        BaseEnhancedLoader(cfg={})


def test_workers_never_repeat_a_random_draw() -> None:
    """Two workers each collate their first batch of the same cells: the batch numbers that seed
    the augmentation differ (the worker's seed offsets them), so the noise differs."""
    loader = make_loader(StochasticDataLoader, {"data": SharedFile(PBMC)}).train()
    items = [loader.dataset()[0]] * 16
    batches = list(DataLoader(items, batch_size=8, collate_fn=loader, num_workers=2))
    assert len(batches) == 2
    assert not torch.equal(batches[0]["noise_nd"], batches[1]["noise_nd"])
    assert not torch.equal(batches[0]["counts_ng"], batches[1]["counts_ng"])
