"""StochasticDataModule / StochasticComponent on real counts (pbmc68k, wu2020 T cells): the
augmentation's distributions (fixed seeds; each statistical test has a stated false-alarm rate),
augmentation off outside training, gene variability against numpy, reproducibility."""

from __future__ import annotations

from typing import Any

import anndata as ad
import numpy as np
import pytest
import scipy.stats
import torch

from enhanced_dm import (
    BaseEnhancedDataModule,
    ConfigError,
    StochasticComponent,
    StochasticDataLoader,
    StochasticDataModule,
)
from enhanced_dm.datasets import hsmm_timecourse
from enhanced_dm.transforms.context import StepContext
from enhanced_dm.transforms.noise import CountNoise
from tests.contract import assert_same, check_component
from tests.helpers import shared_data

PBMC = "singlecell/pbmc68k_reduced_counts.h5ad"
WU2020 = "singlecell/wu2020_tcells_counts.h5ad"
OPTIONS: dict[str, Any] = dict(batch_size=64, val_fraction=0.2, progress=False, seed=3)
FALSE_ALARM = 1e-3  # each statistical test below rejects a correct sampler with probability 1e-3


def whole_batch(relative: str) -> dict[str, torch.Tensor]:
    """Every cell of a real file as one CSR batch (what the counts slot receives)."""
    dm = BaseEnhancedDataModule(str(shared_data(relative)), progress=False)
    dm.setup("fit")
    batch = dm.store.read(np.arange(dm.store.n_obs))
    return {key: value for key, value in batch.items() if torch.is_tensor(value)}


def augment(batch: dict, types: list[str], strength: float, seed: int = 0) -> dict:
    step = CountNoise(types, (strength, strength))
    return step(batch, StepContext("train", seed=seed, epoch=0, batch_index=0))


def test_thinning_keeps_one_minus_s_and_never_grows_a_count() -> None:
    batch = whole_batch(WU2020)
    out = augment(batch, ["thinning"], 0.3)
    before, after = batch["counts_ng"].values(), out["counts_ng"].values()
    assert torch.equal(out["counts_ng"].col_indices(), batch["counts_ng"].col_indices())
    assert (
        after.dtype == before.dtype and bool((after >= 0).all()) and bool((after <= before).all())
    )
    kept = after.sum().item() / before.sum().item()
    assert abs(kept - 0.7) < 0.007  # within 1 % of 1 - s
    factor = out["total_counts_n"] / batch["total_counts_n"]
    torch.testing.assert_close(factor, out["noise_library_factor_n"], rtol=1e-6, atol=1e-6)


def test_the_size_factor_is_log_normal() -> None:
    batch = whole_batch(PBMC)
    strength = 0.5
    out = augment(batch, ["size"], strength, seed=11)
    totals = batch["counts_ng"].to_dense().sum(1).double()
    augmented = out["counts_ng"].to_dense().sum(1).double()
    usable = totals >= 300  # Poisson resampling adds ~1/sqrt(total) to the log factor
    z = (torch.log(augmented[usable] / totals[usable]) / strength).numpy()
    assert scipy.stats.kstest(z, "norm").pvalue > FALSE_ALARM
    assert float((out["counts_ng"].values() % 1 == 0).all())


def test_dropout_zeroes_s_over_two_of_the_detected_counts() -> None:
    batch = whole_batch(WU2020)
    out = augment(batch, ["dropout"], 0.4, seed=5)
    before, after = batch["counts_ng"].values(), out["counts_ng"].values()
    detected = before > 0
    zeroed = int(((after == 0) & detected).sum())
    assert bool((after[after > 0] == before[after > 0]).all())
    test = scipy.stats.binomtest(zeroed, int(detected.sum()), 0.2)
    assert test.pvalue > FALSE_ALARM


def test_no_noise_outside_training_equals_the_base_datamodule() -> None:
    data = str(shared_data(PBMC))
    options = {**OPTIONS, "normalization_type": "pearson", "per_cell_normalization": False}
    stochastic = StochasticDataModule(data, **OPTIONS)
    base = BaseEnhancedDataModule(data, **options)
    for dm in (stochastic, base):
        dm.setup("fit")
    for stage, loader in (("val", "val_dataloader"), ("predict", "predict_dataloader")):
        for ours, theirs in zip(
            getattr(stochastic, loader)(), getattr(base, loader)(), strict=True
        ):
            a, b = stochastic.normalize(ours, stage=stage), base.normalize(theirs, stage=stage)
            for key in b:
                assert_same(a[key], b[key], f"{stage}: {key}")
            assert bool((a["noise_strength_n"] == 0).all())
    # fitting passes ran without augmentation: the fitted Pearson statistics are the base's
    assert stochastic.pipeline is not None and base.pipeline is not None
    ours = dict(stochastic.pipeline.named_transforms())["pearson"]
    theirs = dict(base.pipeline.named_transforms())["pearson"]
    assert_same(ours.state_dict(), theirs.state_dict(), "pearson statistics")


def test_gene_variability_equals_numpy() -> None:
    dm = StochasticDataModule(str(shared_data(WU2020)), **OPTIONS)
    dm.setup("fit")
    counts = ad.read_h5ad(shared_data(WU2020)).X[np.sort(dm.split["train"])]
    counts = np.asarray(counts.todense(), dtype=np.float64)
    mean = counts.mean(0)
    variance = counts.var(0, ddof=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        expected = {
            "mean": mean,
            "variance": variance,
            "fano": np.where(mean > 0, variance / mean, 0),
            "cv2": np.where(mean > 0, variance / mean**2, 0),
            "overdispersion": np.where(mean > 0, np.maximum((variance - mean) / mean**2, 0), 0),
        }
    table = dm.gene_variability
    assert list(table.columns) == list(expected) and list(table.index) == dm.var_names
    for column, values in expected.items():
        np.testing.assert_allclose(table[column], values, rtol=1e-6, atol=1e-9, err_msg=column)
    assert (mean == 0).any()  # genes never seen in the train cells: 0 everywhere
    stats = dm.get_stochastic_stats()
    expressed = mean > 0
    assert stats["overdispersed_fraction"] == pytest.approx(
        np.mean(variance[expressed] > mean[expressed])
    )


def test_augmentation_is_reproducible_and_differs_by_rank_epoch_and_batch() -> None:
    batch = whole_batch(PBMC)
    step = CountNoise(["thinning", "size", "dropout"], (0.1, 0.9))
    first = step(batch, StepContext("train", seed=1, epoch=0, global_rank=0, batch_index=2))
    again = step(batch, StepContext("train", seed=1, epoch=0, global_rank=0, batch_index=2))
    assert_same(first, again, "same context")
    for other in (
        StepContext("train", seed=1, epoch=0, global_rank=1, batch_index=2),
        StepContext("train", seed=1, epoch=1, global_rank=0, batch_index=2),
        StepContext("train", seed=1, epoch=0, global_rank=0, batch_index=3),
    ):
        assert not torch.equal(
            step(batch, other)["counts_ng"].values(), first["counts_ng"].values()
        )


def test_a_resumed_epoch_gets_the_uninterrupted_noise() -> None:
    data = str(shared_data(PBMC))
    options = {**OPTIONS, "block_size": 8, "shuffle_buffer": 2}  # one batch per loader item
    dm = StochasticDataModule(data, **options)
    dm.setup("fit")
    whole = [dm.normalize(b, stage="train")["counts_ng"] for b in dm.train_dataloader()]
    iterator = iter(dm.train_dataloader())
    next(iterator)
    next(iterator)
    state = dm.state_dict()
    resumed = StochasticDataModule(data, **options)
    resumed.load_state_dict(state)
    resumed.setup("fit")
    rest = [resumed.normalize(b, stage="train")["counts_ng"] for b in resumed.train_dataloader()]
    start = state["sampler"]["start_batch"]
    assert start == 2 and len(rest) == len(whole) - start
    for a, b in zip(rest, whole[start:], strict=True):
        assert torch.equal(a, b)


def test_noise_inputs_are_fixed_per_cell_outside_training_and_shared_per_batch_group() -> None:
    dm = StochasticDataModule(str(shared_data(WU2020)), batch_key="patient", **OPTIONS)
    dm.setup("fit")
    batch = next(iter(dm.predict_dataloader()))
    first = dm.normalize(batch)["noise_nd"]
    assert torch.equal(first, dm.normalize(batch)["noise_nd"])
    trained = [dm.normalize(batch, stage="train")["noise_nd"] for _ in range(2)]
    assert torch.equal(trained[0], trained[1])  # same stamped context
    train_batch = next(iter(dm.train_dataloader()))
    fresh = dm.normalize(train_batch, stage="train")
    codes = train_batch["batch_n"]
    extrinsic = fresh["noise_nd"][:, 32:]
    for code in codes.unique():
        rows = extrinsic[codes == code]
        assert torch.equal(rows, rows[:1].expand_as(rows))
    intrinsic = fresh["noise_nd"][:, :32]
    assert abs(float(intrinsic.mean())) < 0.1 and abs(float(intrinsic.std()) - 1) < 0.1
    assert not torch.equal(
        fresh["noise_nd"], dm.normalize(train_batch, stage="predict")["noise_nd"]
    )


def test_options_and_inputs_are_checked() -> None:
    data = str(shared_data(PBMC))
    with pytest.raises(ConfigError, match="noise_dim=60 must equal intrinsic_noise_dim=32"):
        StochasticDataModule(data, noise_dim=60)
    with pytest.raises(ConfigError, match=r"num_noise_types=2 and noise_types=\['dropout'\]"):
        StochasticDataModule(data, num_noise_types=2, noise_types=("dropout",))
    with pytest.raises(ConfigError, match="noise_strength_range"):
        StochasticDataModule(data, noise_strength_range=(0.5, 1.5))
    assert StochasticDataModule(data, noise_types=("dropout", "thinning")).stochastic.types == [
        "thinning",
        "dropout",
    ]
    with pytest.raises(ConfigError, match=r"count noise .* resamples integer counts"):
        StochasticDataModule(
            hsmm_timecourse(), normalization_type="z_score", per_cell_normalization=True
        ).setup("fit")


def test_the_component_contract_and_the_reference_loader() -> None:
    data = str(shared_data(PBMC))

    def make_dm(components):
        return BaseEnhancedDataModule(data, components=components, **OPTIONS)

    check_component(lambda: StochasticComponent(), make_dm)
    loader = StochasticDataLoader(
        {"data": data},
        noise_dim=64,
        num_noise_types=3,
        intrinsic_noise_dim=32,
        extrinsic_noise_dim=32,
        noise_strength_range=(0.1, 0.9),
        progress=False,
    )
    items = [loader.dataset()[i] for i in range(32)]
    evaluated = loader(items)
    trained = loader.train()(items)
    assert evaluated["noise_nd"].shape == (32, 64)
    assert bool((evaluated["noise_strength_n"] == 0).all())
    assert bool((trained["noise_strength_n"] > 0).all())
    assert not torch.equal(trained["counts_ng"], evaluated["counts_ng"])
    assert loader.get_stochastic_stats()["keep_fraction"]["cells_seen"] == 32
