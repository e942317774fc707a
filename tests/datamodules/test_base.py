"""BaseEnhancedDataModule against scanpy on real data, fitting on train cells only, cache, state."""

from __future__ import annotations

import functools

import anndata as ad
import lightning as L
import numpy as np
import pandas as pd
import pytest
import scanpy as sc
import torch

from enhanced_dm import BaseEnhancedDataModule, ConfigError, NormalizationStatsCallback
from tests.helpers import shared_data

WU2020 = "singlecell/wu2020_tcells_counts.h5ad"
TOLERANCE = 1e-4  # max abs difference to scanpy (float32 there, float64 statistics here)


def predicted_x(dm: BaseEnhancedDataModule) -> np.ndarray:
    """x_ng of every cell through predict_dataloader(), in cell order."""
    dm.setup("predict")
    parts, order = [], []
    for batch in dm.predict_dataloader():
        out = dm.normalize(batch)
        parts.append(out["x_ng"].numpy())
        order.append(out["cell_index_n"].numpy())
    order_n = np.concatenate(order)
    assert order_n.tolist() == list(range(len(order_n)))  # every cell once, in order
    return np.concatenate(parts)


@functools.cache
def log_normalized(target_sum: float | None) -> ad.AnnData:
    """scanpy normalize_total -> log1p of the real counts, in float64 (as our statistics are), so
    scanpy's own float32 cancellation on tiny-variance genes does not blur the comparison."""
    adata = ad.read_h5ad(shared_data(WU2020))
    adata.X = adata.X.astype(np.float64)
    sc.pp.normalize_total(adata, target_sum=target_sum)
    sc.pp.log1p(adata)
    return adata


def scanpy_reference(target_sum: float | None) -> np.ndarray:
    adata = log_normalized(target_sum).copy()
    sc.pp.scale(adata)
    return np.asarray(adata.X)


def assert_matches_scale_per_group(x: np.ndarray, group: str) -> None:
    """Equal to ``sc.pp.scale`` run group by group.

    Tolerance 1e-4, except where a group's gene has std < 0.01: there our float32 input (rounded
    at ~3e-7 relative) is amplified by 1/std, so 1e-2 is allowed. scanpy's NaN for one-cell groups
    (ddof=1) is 0 here.
    """
    adata = log_normalized(1e4)
    for value in adata.obs[group].unique():
        mask = (adata.obs[group] == value).to_numpy()
        if mask.sum() == 1:
            assert not x[mask].any()
            continue
        part = adata[mask].copy()
        std_g = np.asarray(part.X.toarray().std(axis=0, ddof=1))
        sc.pp.scale(part)
        tolerance_g = np.where(std_g >= 0.01, TOLERANCE, 1e-2)
        assert (np.abs(x[mask] - part.X) <= tolerance_g).all(), value


def set_rows(matrix, rows: list[int], value: int, n_genes: int = 100):
    """Copy of a CSR matrix with the first ``n_genes`` entries of ``rows`` set to ``value``."""
    edited = matrix.tolil()
    for row in rows:
        edited[row, :n_genes] = value
    return edited.tocsr()


def make_dm(**options) -> BaseEnhancedDataModule:
    defaults = dict(data=shared_data(WU2020), val_fraction=0.0, batch_size=64, progress=False)
    return BaseEnhancedDataModule(**{**defaults, **options})


@pytest.mark.parametrize("target_sum", [1e4, "median"])
def test_z_score_matches_scanpy(target_sum) -> None:
    x = predicted_x(make_dm(target_sum=target_sum))
    reference = scanpy_reference(None if target_sum == "median" else target_sum)
    assert np.abs(x - reference).max() < TOLERANCE


@pytest.mark.parametrize("backed", [False, True])
def test_batch_aware_z_score_matches_scale_per_batch(backed: bool) -> None:
    dm = make_dm(batch_key="batch", batch_aware_normalization=True, backed=backed)
    assert_matches_scale_per_group(predicted_x(dm), "batch")


def test_cell_type_aware_z_score_matches_scale_per_cell_type() -> None:
    dm = make_dm(cell_type_key="cell_type", biological_normalization=True)
    assert_matches_scale_per_group(predicted_x(dm), "cell_type")


def test_batch_and_cell_type_aware_z_score_matches_scale_per_pair() -> None:
    """Both flags (the reference's BaseEnhancedLoader example): statistics per batch x cell type."""
    dm = make_dm(
        batch_key="batch",
        cell_type_key="cell_type",
        batch_aware_normalization=True,
        biological_normalization=True,
    )
    adata = log_normalized(1e4)
    adata.obs["pair"] = adata.obs["batch"].astype(str) + "/" + adata.obs["cell_type"].astype(str)
    assert_matches_scale_per_group(predicted_x(dm), "pair")


def test_in_memory_and_backed_batches_are_identical() -> None:
    batches = []
    for backed in (False, True):
        dm = make_dm(backed=backed, val_fraction=0.2, batch_key="batch", block_size=8)
        dm.setup("fit")
        batches.append([dm.normalize(b) for b in dm.train_dataloader()])
    for a, b in zip(*batches, strict=True):
        for key in a:
            assert torch.equal(a[key], b[key]), key


def test_fitting_uses_train_cells_only(tmp_path) -> None:
    adata = ad.read_h5ad(shared_data(WU2020))
    dm = make_dm(data=adata, val_fraction=0.3, seed=1)
    dm.setup("fit")
    val_cell = int(dm.split["val"][0])
    changed = adata.copy()
    changed.X = set_rows(changed.X, [val_cell], 1000)
    dm_changed = make_dm(data=changed, val_fraction=0.3, seed=1)
    dm_changed.setup("fit")
    assert np.array_equal(dm.split["train"], dm_changed.split["train"])
    a, b = dm.state_dict()["fitted"]["z_score"], dm_changed.state_dict()["fitted"]["z_score"]
    assert torch.equal(a["center_g"], b["center_g"]) and torch.equal(a["scale_g"], b["scale_g"])
    # ... while changing a train cell does change them.
    changed.X = set_rows(changed.X, [int(dm.split["train"][0])], 1000)
    dm_train_changed = make_dm(data=changed.copy(), val_fraction=0.3, seed=1)
    dm_train_changed.setup("fit")
    assert not torch.equal(
        a["center_g"], dm_train_changed.state_dict()["fitted"]["z_score"]["center_g"]
    )


def test_second_setup_reuses_the_stats_cache(tmp_path, monkeypatch) -> None:
    first = make_dm(stats_cache_dir=tmp_path, target_sum="median")
    first.setup("fit")
    assert first.stats_cache_path is not None and first.stats_cache_path.exists()

    def refuse_to_fit(*args, **kwargs):
        raise AssertionError("statistics were refitted instead of read from the cache")

    monkeypatch.setattr("enhanced_dm.fitting.fit_or_load.fit_pipeline", refuse_to_fit)
    second = make_dm(stats_cache_dir=tmp_path, target_sum="median")
    second.setup("fit")
    assert second.stats_cache_path == first.stats_cache_path
    for name, state in first.state_dict()["fitted"].items():
        for key, value in state.items():
            assert torch.equal(value, second.state_dict()["fitted"][name][key])
    other = make_dm(stats_cache_dir=tmp_path, target_sum=1e4)  # other config: other key
    with pytest.raises(AssertionError, match="refitted"):
        other.setup("fit")


def test_restored_datamodule_reproduces_the_statistics(monkeypatch) -> None:
    original = make_dm(batch_key="batch", batch_aware_normalization=True, val_fraction=0.2)
    original.setup("fit")
    state = original.state_dict()
    monkeypatch.setattr(
        "enhanced_dm.fitting.fit_or_load.fit_pipeline",
        lambda *a, **k: pytest.fail("a restored DataModule must not refit"),
    )
    restored = make_dm(batch_key="batch", batch_aware_normalization=True, val_fraction=0.2)
    restored.load_state_dict(state)
    restored.setup("fit")
    assert np.array_equal(predicted_x(original), predicted_x(restored))


def test_zero_count_cells_give_zeros_not_nan() -> None:
    adata = ad.read_h5ad(shared_data(WU2020))
    adata.X = set_rows(adata.X, [3], 0, n_genes=adata.n_vars)
    dm = make_dm(data=adata, per_gene_normalization=False)
    x = predicted_x(dm)
    assert np.isfinite(x).all() and not x[3].any()


def test_statistics_api_reports_and_resets() -> None:
    dm = make_dm(max_value=3.0)
    predicted_x(dm)
    stats = dm.get_normalization_stats()
    assert set(stats) == {"densify", "normalize_total", "log1p", "z_score"}
    z = stats["z_score"]
    assert z["cells_seen"] == 343 and z["nonfinite_count"] == 0
    assert abs(z["mean"]) < 0.05 and z["max"] <= 3.0 and z["min"] >= -3.0
    assert 0 < z["clipped_fraction"] < 0.05 and 0 < z["zero_fraction"] < 1
    dm.reset_normalization_stats()
    assert dm.get_normalization_stats() == {}


class TinyClassifier(L.LightningModule):
    def __init__(self, n_genes: int, n_classes: int) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(n_genes, n_classes)

    def training_step(self, batch, batch_idx):
        loss = torch.nn.functional.cross_entropy(self.layer(batch["x_ng"]), batch["cell_type_n"])
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch, batch_idx):
        self.log(
            "val_loss",
            torch.nn.functional.cross_entropy(self.layer(batch["x_ng"]), batch["cell_type_n"]),
        )

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=1e-3)


def test_trainer_fit_logs_normalization_stats(tmp_path) -> None:
    dm = BaseEnhancedDataModule(
        data=shared_data("singlecell/pbmc68k_reduced_counts.h5ad"),
        cell_type_key="cell_type",
        batch_size=64,
        progress=False,
    )
    dm.setup("fit")
    logger = L.pytorch.loggers.CSVLogger(tmp_path)
    trainer = L.Trainer(
        max_epochs=1,
        accelerator="cpu",
        logger=logger,
        enable_progress_bar=False,
        log_every_n_steps=1,
        enable_checkpointing=False,
        callbacks=[NormalizationStatsCallback(log_every_n_steps=2)],
    )
    trainer.fit(TinyClassifier(dm.n_genes, len(dm.categories["cell_type"])), datamodule=dm)
    metrics = pd.read_csv(logger.log_dir + "/metrics.csv")
    assert "normalization/z_score/mean" in metrics.columns
    assert metrics["normalization/z_score/cells_seen"].max() > 0
    assert "train_loss" in metrics.columns


def test_evaluating_from_a_checkpoint_accepts_another_batch_size() -> None:
    from lightning.pytorch.trainer.states import TrainerFn

    trained = make_dm(batch_size=128, val_fraction=0.2)
    trained.setup("fit")
    list(trained.train_dataloader())
    state = trained.state_dict()

    for function, accepted in ((TrainerFn.TESTING, True), (TrainerFn.FITTING, False)):
        other = make_dm(batch_size=64, val_fraction=0.2)
        trainer = L.Trainer(logger=False, enable_progress_bar=False)
        trainer.state.fn = function
        other.trainer = trainer
        if accepted:
            other.load_state_dict(state)  # test/predict/validate: the order does not matter
        else:
            with pytest.raises(ConfigError, match="batch_size"):
                other.load_state_dict(state)


def test_sparse_counts_option_keeps_the_counts_and_changes_nothing_else() -> None:
    batches = []
    for dense_counts in (True, False):
        dm = make_dm(dense_counts=dense_counts, block_size=8)
        dm.setup("fit")
        batches.append([dm.normalize(b) for b in dm.train_dataloader()])
    for dense, sparse in zip(*batches, strict=True):
        assert sparse["counts_ng"].layout == torch.sparse_csr
        assert torch.equal(sparse["counts_ng"].to_dense(), dense["counts_ng"])
        for key in dense.keys() - {"counts_ng"}:
            assert torch.equal(dense[key], sparse[key]), key


def test_sparse_counts_option_is_refused_when_a_step_reads_the_counts() -> None:
    with pytest.raises(ConfigError, match=r"dense_counts=False.*pearson"):
        make_dm(
            dense_counts=False, normalization_type="pearson", per_cell_normalization=False
        ).setup("fit")
