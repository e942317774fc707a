"""CellTypeClassifier and ExpressionAutoencoder on synthetic batches and on the bundled PBMCs."""

from __future__ import annotations

import warnings
from pathlib import Path

import lightning as L
import pytest
import torch

from enhanced_dm import BaseEnhancedDataModule
from enhanced_dm.datasets import pbmc68k
from enhanced_dm.errors import ConfigError
from enhanced_dm.models import CellTypeClassifier, ExpressionAutoencoder, input_features


def trainer(tmp_path: Path, max_epochs: int, **options: object) -> L.Trainer:
    return L.Trainer(
        max_epochs=max_epochs,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
        **options,
    )


@pytest.fixture(scope="module")
def pbmc_datamodule() -> BaseEnhancedDataModule:
    datamodule = BaseEnhancedDataModule(
        data=pbmc68k(),
        cell_type_key="cell_type",
        total_counts_key="total_counts_all_genes_original",
        val_fraction=0.15,
        test_fraction=0.15,
        batch_size=64,
        seed=0,
        progress=False,
    )
    datamodule.setup("fit")
    return datamodule


def batch(n: int = 8, genes: int = 5, **context: torch.Tensor) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return {
        "x_ng": torch.randn(n, genes, generator=generator),
        "counts_ng": torch.ones(n, genes, dtype=torch.int32),
        "total_counts_n": torch.full((n,), 5.0),
        "cell_index_n": torch.arange(n),
        "cell_type_n": torch.arange(n) % 3,
        **context,
    }


def test_input_features_appends_context_in_sorted_key_order() -> None:
    example = batch(
        4,
        5,
        pathway_scores_np=torch.ones(4, 2),
        compartment_x_nk=torch.zeros(4, 3, dtype=torch.float64),
    )
    example["memory_nsg"] = torch.ones(4, 2, 5)  # not a per-cell feature matrix: ignored
    features = input_features(example)
    assert features.shape == (4, 5 + 3 + 2)
    assert features.dtype == torch.float32
    torch.testing.assert_close(features[:, :5], example["x_ng"])
    assert (features[:, 5:8] == 0).all() and (features[:, 8:] == 1).all()  # _nk before _np


def test_input_features_names_the_missing_key() -> None:
    with pytest.raises(ConfigError, match="the batch has no 'x_ng'"):
        input_features({"counts_ng": torch.ones(2, 3)})


def test_classifier_sizes_its_input_from_the_first_batch() -> None:
    model = CellTypeClassifier(n_classes=3, hidden_dims=[8])
    logits = model(batch(6, 5, pathway_scores_np=torch.ones(6, 4)))
    assert logits.shape == (6, 3)
    assert model.network[0].in_features == 9
    predictions = model.predict_step(batch(6, 5, pathway_scores_np=torch.ones(6, 4)), 0)
    assert set(predictions) == {"pred_n", "prob_nc", "cell_index_n"}
    torch.testing.assert_close(predictions["prob_nc"].sum(dim=1), torch.ones(6))


def test_classifier_without_classes_or_labels_says_what_is_missing() -> None:
    with pytest.raises(ConfigError, match="does not know its number of classes"):
        CellTypeClassifier()(batch())
    model = CellTypeClassifier(n_classes=3)
    unlabeled = batch()
    del unlabeled["cell_type_n"]
    with pytest.raises(ConfigError, match="set the DataModule's cell_type_key"):
        model.training_step(unlabeled, 0)
    with pytest.raises(ConfigError, match="at least 2 classes"):
        CellTypeClassifier(n_classes=1)


def test_classifier_learns_pbmc_cell_types(
    pbmc_datamodule: BaseEnhancedDataModule, tmp_path: Path
) -> None:
    L.seed_everything(0, workers=True)
    model = CellTypeClassifier()
    fit = trainer(tmp_path, max_epochs=10)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fit.fit(model, datamodule=pbmc_datamodule)
        val_acc = float(fit.callback_metrics["val/acc"])
        train_loss = float(fit.callback_metrics["train/loss"])
        (tested,) = fit.test(model, datamodule=pbmc_datamodule, verbose=False)
    assert model.hparams.n_classes == 10
    assert model.hparams.class_names == pbmc_datamodule.categories["cell_type"]
    # The largest class (Dendritic) is 240 of 700 cells: always guessing it scores about 0.34.
    assert val_acc > 0.6
    assert tested["test/acc"] > 0.6
    assert train_loss < 1.0


def test_classifier_checkpoint_round_trip(
    pbmc_datamodule: BaseEnhancedDataModule, tmp_path: Path
) -> None:
    model = CellTypeClassifier(hidden_dims=[16])
    fit = trainer(tmp_path, max_epochs=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fit.fit(model, datamodule=pbmc_datamodule)
    path = tmp_path / "model.ckpt"
    fit.save_checkpoint(path)
    restored = CellTypeClassifier.load_from_checkpoint(path)
    example = pbmc_datamodule.normalize(next(iter(pbmc_datamodule.predict_dataloader())))
    model.eval()
    restored.eval()
    torch.testing.assert_close(restored(example), model(example))


def test_autoencoder_reconstructs_better_than_the_mean(
    pbmc_datamodule: BaseEnhancedDataModule, tmp_path: Path
) -> None:
    L.seed_everything(0, workers=True)
    model = ExpressionAutoencoder(latent_dim=8)
    fit = trainer(tmp_path, max_epochs=10)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fit.fit(model, datamodule=pbmc_datamodule)
    assert model.hparams.n_genes == pbmc_datamodule.n_genes
    # z-scored genes: predicting the mean (0) everywhere has a mean squared error of about 1.
    assert fit.callback_metrics["val/loss"] < 0.95
    out = model.predict_step(
        pbmc_datamodule.normalize(next(iter(pbmc_datamodule.predict_dataloader()))),
        0,
    )
    assert out["z_nd"].shape[1] == 8
