"""TemporalDataModule / TemporalComponent on the real HSMM myoblast time course (FPKM, obs
``Hours`` in {0, 24, 48, 72}) against pandas groupby references, and the sequence sampler's
invariants."""

from __future__ import annotations

import warnings
from typing import Any

import anndata as ad
import lightning as L
import numpy as np
import pandas as pd
import pytest
import scanpy as sc
import torch

from enhanced_dm import ConfigError, TemporalComponent, TemporalDataLoader, TemporalDataModule
from enhanced_dm.data.time_sequences import draw_sequences
from enhanced_dm.datamodules.base import BaseEnhancedDataModule
from enhanced_dm.datasets import hsmm_timecourse
from tests.components.reference import all_outputs
from tests.contract import check_component
from tests.helpers import quiet_trainer, shared_data

HSMM = "singlecell/hsmm_myoblast_timecourse_fpkm.h5ad"
OPTIONS: dict[str, Any] = dict(
    time_key="Hours", batch_size=64, val_fraction=0.2, progress=False, seed=1
)


@pytest.fixture(scope="module")
def hsmm() -> ad.AnnData:
    return ad.read_h5ad(shared_data(HSMM))


def log_normalized(adata: ad.AnnData) -> np.ndarray:
    """scanpy normalize_total(1e4) -> log1p in float64, dense."""
    copy = adata.copy()
    copy.X = copy.X.astype(np.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        sc.pp.normalize_total(copy, target_sum=1e4)
    sc.pp.log1p(copy)
    return np.asarray(copy.X.todense())


def fitted(data: Any, **options: Any) -> TemporalDataModule:
    dm = TemporalDataModule(data, **{**OPTIONS, **options})
    dm.setup("fit")
    return dm


def groupby_stats(x: np.ndarray, steps: np.ndarray, train: np.ndarray) -> tuple[Any, Any]:
    """Per-step train mean and std (ddof=1) of every gene, via pandas. A zero std becomes 1, as
    in scanpy, and so does one below float32's smallest normal number: HSMM holds denormal FPKM
    values (1e-45), whose spread is zero in float32 (documented in fitting/moments.py)."""
    frame = pd.DataFrame(x[train])
    grouped = frame.groupby(steps[train])
    std = grouped.std(ddof=1).to_numpy()
    return grouped.mean().to_numpy(), np.where(std >= np.finfo(np.float32).tiny, std, 1.0)


@pytest.mark.parametrize("mode", ["per_step", "baseline"])
def test_time_step_normalization_equals_a_pandas_groupby(hsmm: ad.AnnData, mode: str) -> None:
    dm = fitted(hsmm, time_normalization=mode)
    out = all_outputs(dm, ["x_ng", "time_step_n", "time_n"])
    hours = hsmm.obs["Hours"].to_numpy()
    steps = np.searchsorted([0, 24, 48, 72], hours)
    np.testing.assert_array_equal(out["time_step_n"], steps)
    np.testing.assert_array_equal(out["time_n"], hours.astype(np.float32))
    assert dm.temporal.bins is not None and dm.temporal.bins.values.tolist() == [0, 24, 48, 72]
    x = log_normalized(hsmm)
    train = np.zeros(hsmm.n_obs, dtype=bool)
    train[dm.split["train"]] = True
    mean, std = groupby_stats(x, steps, train)
    row = steps if mode == "per_step" else np.zeros_like(steps)
    expected = (x - mean[row]) / std[row]
    # rtol for the genes whose tiny (denormal-data) std makes z-scores of 1e7
    np.testing.assert_allclose(out["x_ng"], expected, rtol=1e-5, atol=1e-5)


def test_kinetics_features_equal_a_pandas_groupby(hsmm: ad.AnnData) -> None:
    dm = fitted(hsmm)
    keys = ["fast_response_ng", "slow_response_ng", "previous_state_ng", "time_step_n"]
    out = all_outputs(dm, keys)
    x = log_normalized(hsmm)
    steps = out["time_step_n"]
    train = np.zeros(hsmm.n_obs, dtype=bool)
    train[dm.split["train"]] = True
    mean = pd.DataFrame(x[train]).groupby(steps[train]).mean().to_numpy()
    previous = mean[np.maximum(steps - 1, 0)]
    fast = np.where((steps == 0)[:, None], 0.0, x - previous)
    np.testing.assert_allclose(out["fast_response_ng"], fast, rtol=0, atol=1e-5)
    np.testing.assert_allclose(out["slow_response_ng"], x - mean[0], rtol=0, atol=1e-5)
    np.testing.assert_allclose(out["previous_state_ng"], previous, rtol=0, atol=1e-5)


def test_more_distinct_times_than_steps_are_binned_at_train_quantiles(hsmm: ad.AnnData) -> None:
    dm = fitted(hsmm, time_key="Pseudotime", time_steps=5)
    out = all_outputs(dm, ["time_step_n", "time_embedding_nd"])
    time = hsmm.obs["Pseudotime"].to_numpy(np.float32).astype(np.float64)  # obs is read as float32
    edges = np.quantile(time[dm.split["train"]], [0.2, 0.4, 0.6, 0.8])
    np.testing.assert_array_equal(dm.time_step_edges, edges)
    np.testing.assert_array_equal(out["time_step_n"], np.searchsorted(edges, time, side="right"))
    # a time equal to an edge goes to the later step
    assert dm.temporal.bins is not None
    assert dm.temporal.bins.steps(edges).tolist() == [1, 2, 3, 4]
    counts = np.bincount(out["time_step_n"][dm.split["train"]])
    assert counts.max() - counts.min() <= 1
    frequency = 10_000 ** (-np.arange(8) * 2 / 16)
    angle = time[:, None] * frequency
    np.testing.assert_allclose(
        out["time_embedding_nd"], np.hstack([np.sin(angle), np.cos(angle)]), atol=1e-6
    )


def test_bad_time_columns_are_refused_clearly(hsmm: ad.AnnData) -> None:
    adata = hsmm.copy()
    adata.obs["day"] = adata.obs["Hours"].map(lambda h: f"{h}h")
    with pytest.raises(ConfigError, match=r"time_key='day' holds text categories without an order"):
        fitted(adata, time_key="day")
    adata.obs["day"] = pd.Categorical(
        adata.obs["day"], categories=["0h", "24h", "48h", "72h"], ordered=True
    )
    ordered = fitted(adata, time_key="day")
    assert ordered.n_time_steps == 4
    adata.obs["gappy"] = adata.obs["Pseudotime"].where(adata.obs["Pseudotime"] > 5)
    with pytest.raises(ConfigError, match=r"time_key='gappy': \d+ of 271 cells have no time"):
        fitted(adata, time_key="gappy")
    with pytest.raises(ConfigError, match="time_embedding_dim=3 is invalid; expected an even"):
        TemporalDataModule(adata, time_embedding_dim=3)


def test_a_sparse_step_falls_back_to_the_global_statistics(hsmm: ad.AnnData) -> None:
    with pytest.warns(UserWarning, match=r"steps \[3\] have fewer than min_cells_per_step=50"):
        dm = fitted(hsmm, min_cells_per_step=50)
    stats = dm.get_temporal_stats()
    assert stats["cells_per_step"]["train"][3] < 50 <= min(stats["cells_per_step"]["train"][:3])
    assert stats["steps_fell_back"] == [3]
    step = dm.temporal.step("time_per_step")
    assert step.fitted_b.tolist() == [True, True, True, False]


def sequence_dm(data: Any, **options: Any) -> TemporalDataModule:
    return fitted(data, sequence_mode=True, max_sequence_length=16, batch_size=4, **options)


def epoch_sequences(dm: TemporalDataModule, epoch: int = 0) -> list[np.ndarray]:
    sampler = dm._sampler(dm.split["train"], shuffle=True)
    sampler.set_epoch(epoch)
    return [row[row >= 0] for batch in sampler for row in batch]


@pytest.mark.parametrize("strategy", ["uniform", "proportional", "window"])
def test_sequence_invariants(hsmm: ad.AnnData, strategy: str) -> None:
    dm = sequence_dm(hsmm, temporal_sampling_strategy=strategy, trajectory_key="Media")
    batch = dm.normalize(next(iter(dm.train_dataloader())), stage="train")
    mask = batch["mask_ns"]
    assert torch.equal(mask, batch["cell_index_ns"] >= 0)
    assert torch.all(batch["x_nsg"][~mask] == 0)
    time = batch["time_ns"]
    for row in range(time.shape[0]):
        real = time[row][mask[row]]
        assert torch.all(real[1:] >= real[:-1])
    step = batch["time_step_ns"]
    expected = (step[:, None, :] <= step[:, :, None]) & mask[:, None, :]
    assert torch.equal(batch["temporal_mask_nss"], expected)
    media = hsmm.obs["Media"].to_numpy()
    sequences = epoch_sequences(dm)
    cells = np.concatenate(sequences)
    assert len(cells) == len(set(cells)) == len(dm.split["train"])
    assert all(len(set(media[s])) == 1 for s in sequences)
    assert all(len(s) <= 16 for s in sequences)
    if strategy == "uniform":
        # Media splits the cells: GM holds step 0 only, DM steps 1-3; every full DM sequence
        # takes 5-6 cells of each of its steps, but the one where a step runs out
        steps = dm.temporal.step_c
        dm_full = [np.bincount(steps[s], minlength=4) for s in sequences if len(s) == 16]
        dm_full = [c for c in dm_full if c[0] == 0 and (c[1:] > 0).all()]
        balanced = [c for c in dm_full if c[1:].max() - c[1:].min() <= 1]
        assert (
            len(balanced) >= 5 and len(dm_full) - len(balanced) <= 1
        )  # the one where a step ran out
    if strategy == "window":
        times = dm.temporal.time_c
        # a window is a contiguous stretch of the time-sorted cells of its group
        for sequence in sequences:
            group = media[sequence[0]]
            others = [c for c in dm.split["train"] if media[c] == group and c not in set(sequence)]
            low, high = times[sequence].min(), times[sequence].max()
            assert not any(low < times[c] < high for c in others)


def test_uniform_and_proportional_quotas() -> None:
    cells = np.arange(100)
    step = np.repeat([0, 1, 2], [40, 30, 30])
    rng = np.random.default_rng(0)
    common = dict(length=12, step_weights=np.array([40, 30, 30]))
    uniform = draw_sequences(
        cells, cells.astype(float), step, np.zeros(100, int), strategy="uniform", rng=rng, **common
    )
    counts = [np.bincount(step[s], minlength=3).tolist() for s in uniform]
    assert counts.count([4, 4, 4]) == 7 and sum(map(len, uniform)) == 100
    proportional = draw_sequences(
        cells,
        cells.astype(float),
        step,
        np.zeros(100, int),
        strategy="proportional",
        rng=rng,
        **common,
    )
    counts = [np.bincount(step[s], minlength=3).tolist() for s in proportional]
    assert counts.count([5, 4, 3]) + counts.count([5, 3, 4]) >= 7


def test_sequences_depend_on_seed_and_epoch_and_eval_is_fixed(hsmm: ad.AnnData) -> None:
    dm = sequence_dm(hsmm)
    again = sequence_dm(hsmm)
    first = epoch_sequences(dm, 0)
    assert all(np.array_equal(a, b) for a, b in zip(first, epoch_sequences(again, 0), strict=True))
    assert not all(
        np.array_equal(a, b) for a, b in zip(first, epoch_sequences(dm, 1), strict=False)
    )
    val = [dm.normalize(b)["cell_index_ns"] for b in dm.val_dataloader()]
    val_again = [dm.normalize(b)["cell_index_ns"] for b in dm.val_dataloader()]
    assert all(torch.equal(a, b) for a, b in zip(val, val_again, strict=True))
    predicted = torch.cat(
        [dm.normalize(b)["cell_index_ns"].flatten() for b in dm.predict_dataloader()]
    )
    real = predicted[predicted >= 0]
    assert sorted(real.tolist()) == list(range(hsmm.n_obs))


def test_resume_mid_epoch_gives_the_uninterrupted_sequences(hsmm: ad.AnnData) -> None:
    dm = sequence_dm(hsmm)
    sampler = dm._sampler(dm.split["train"], shuffle=True)
    sampler.set_epoch(2)
    whole = list(sampler)
    partial = dm._sampler(dm.split["train"], shuffle=True)
    partial.set_epoch(2)
    iterator = iter(partial)
    for _ in range(3):
        next(iterator)
    state = partial.state_dict()
    resumed = dm._sampler(dm.split["train"], shuffle=True)
    resumed.load_state_dict(state)
    resumed.set_epoch(2)
    rest = list(resumed)
    assert len(rest) == len(whole) - 3
    assert all(np.array_equal(a, b) for a, b in zip(rest, whole[3:], strict=True))
    other = TemporalDataModule(hsmm, **{**OPTIONS, "sequence_mode": True, "batch_size": 4})
    other.setup("fit")
    with pytest.raises(ConfigError, match="sequence_length = 16, this run has 100"):
        other._sampler(other.split["train"], shuffle=True).load_state_dict(state)


def test_the_component_contract_in_both_modes() -> None:
    data = hsmm_timecourse()

    def make_dm(components):
        return BaseEnhancedDataModule(
            data, components=components, batch_size=32, val_fraction=0.2, progress=False
        )

    check_component(lambda: TemporalComponent(time_key="Hours"), make_dm)
    check_component(
        lambda: TemporalComponent(time_key="Hours", sequence_mode=True, max_sequence_length=8),
        make_dm,
    )


class SequenceStepModel(L.LightningModule):
    """Predicts each position's time step from its expression, masked to the real positions."""

    def __init__(self, n_genes: int, n_steps: int) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(n_genes, n_steps)
        self.losses: list[float] = []

    def training_step(self, batch: dict[str, torch.Tensor], batch_index: int) -> torch.Tensor:
        mask = batch["mask_ns"]
        logits = self.layer(batch["x_nsg"][mask])
        loss = torch.nn.functional.cross_entropy(logits, batch["time_step_ns"][mask])
        self.losses.append(float(loss))
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=1e-2)


def test_a_model_trains_on_sequences_through_trainer_fit(tmp_path) -> None:
    dm = TemporalDataModule(
        hsmm_timecourse(),
        time_key="Hours",
        sequence_mode=True,
        max_sequence_length=20,
        batch_size=4,
        val_fraction=0.0,
        progress=False,
    )
    model = SequenceStepModel(1000, 4)
    trainer = quiet_trainer(tmp_path, max_epochs=4)
    trainer.fit(model, datamodule=dm)
    assert len(model.losses) == 4 * len(dm.train_dataloader())
    assert np.mean(model.losses[-3:]) < np.mean(model.losses[:3])
    served = dm.get_temporal_stats()["sequences_served"]
    assert served["sequences"] >= 4 * 13 and 0 <= served["padding_fraction"] < 0.5


def test_the_reference_loader() -> None:
    loader = TemporalDataLoader(
        {"data": hsmm_timecourse()},
        time_steps=5,
        max_sequence_length=100,
        temporal_sampling_strategy="uniform",
        time_key="Hours",
        progress=False,
    )
    batch = loader([loader.dataset()[i] for i in range(8)])
    assert batch["time_step_n"].shape == (8,) and batch["fast_response_ng"].shape == (8, 1000)
    assert loader.get_temporal_stats()["steps"] == 4
