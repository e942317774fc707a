"""``enhanced-dm predict`` writes ``predictions.csv`` beside ``predictions.pt``: one row per cell,
keyed by obs name and file, that joins to ``adata.obs`` / ``adata.obsm`` in one line."""

from __future__ import annotations

import logging
import subprocess
from pathlib import Path
from types import SimpleNamespace

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import torch

from enhanced_dm.data import CellStore
from enhanced_dm.datasets import pbmc68k
from enhanced_dm.predictions import (
    UnsupportedPredictions,
    prediction_table,
    write_prediction_table,
)
from tests.test_cli import enhanced_dm, run_directories

CELLS = 700
# The bundled cells split into two files whose obs names repeat: b.h5ad reuses a.h5ad's first
# REPEATED names (several files often share barcodes).
SPLIT, REPEATED = 300, 50


def read_table(path: Path) -> pd.DataFrame:
    """As docs/predict.md reads it (obs names stay text, "007" is not 7)."""
    return pd.read_csv(path, index_col="obs_name", dtype={"obs_name": str})


def predict(cwd: Path, *overrides: str) -> tuple[Path, subprocess.CompletedProcess[str]]:
    """Run ``enhanced-dm predict``; its run directory and the finished process."""
    result = enhanced_dm("predict", *overrides, cwd=cwd)
    assert result.returncode == 0, result.stderr
    (run,) = run_directories(cwd / "outputs" / "predict")
    return run, result


def sorted_by_cell(predictions: dict[str, torch.Tensor], key: str) -> np.ndarray:
    """``predictions[key]`` of ``predictions.pt`` in cell-index order."""
    return predictions[key][predictions["cell_index_n"].argsort()].numpy()


def assert_classifier_table(table: pd.DataFrame, classes: list[str]) -> None:
    """One probability column per class, rows summing to 1, the label the argmax class."""
    prob_columns = [f"prob_{name}" for name in classes]
    assert list(table.columns[-len(classes) :]) == prob_columns
    prob_nc = table[prob_columns].to_numpy()
    np.testing.assert_allclose(prob_nc.sum(axis=1), 1.0, atol=1e-5)
    assert (table["predicted_label"].to_numpy() == np.asarray(classes)[prob_nc.argmax(1)]).all()


def test_the_classifier_table_joins_the_bundled_cells_in_one_line(tmp_path: Path) -> None:
    run, result = predict(tmp_path)
    path = run / "predictions.csv"
    assert f"prediction table: {path}" in result.stdout
    table = read_table(path)
    adata = pbmc68k()
    classes = list(adata.obs["cell_type"].cat.categories)

    assert table["cell_index_n"].tolist() == list(range(CELLS))
    assert table.index.tolist() == adata.obs_names.tolist()
    assert set(table["file"]) == {"<AnnData #0>"}
    assert_classifier_table(table, classes)
    predictions = torch.load(run / "predictions.pt")
    np.testing.assert_allclose(
        table[[f"prob_{name}" for name in classes]].to_numpy(),
        sorted_by_cell(predictions, "prob_nc"),
        atol=1e-6,
    )

    # The README's line.
    adata.obs = adata.obs.join(pd.read_csv(path, index_col="obs_name", dtype={"obs_name": str}))
    assert adata.n_obs == CELLS and adata.obs["predicted_label"].notna().all()


@pytest.fixture
def two_files(tmp_path: Path) -> list[ad.AnnData]:
    """a.h5ad and b.h5ad in ``tmp_path``: the bundled cells, split, with repeated obs names."""
    adata = pbmc68k()
    parts = [adata[:SPLIT].copy(), adata[SPLIT:].copy()]
    names = parts[1].obs_names.tolist()
    names[:REPEATED] = parts[0].obs_names[:REPEATED]
    parts[1].obs_names = names
    for name, part in zip("ab", parts, strict=True):
        part.write_h5ad(tmp_path / f"{name}.h5ad")
    return parts


def test_the_embedding_table_joins_each_file_by_its_file_column(
    tmp_path: Path, two_files: list[ad.AnnData]
) -> None:
    run, _ = predict(
        tmp_path,
        "model=autoencoder",
        "model.latent_dim=4",
        "data=path",
        "data.path=[a.h5ad,b.h5ad]",
    )
    table = read_table(run / "predictions.csv")
    emb_columns = [f"emb_{j}" for j in range(4)]

    assert table.columns.tolist() == ["file", "cell_index_n", *emb_columns]
    assert table["cell_index_n"].tolist() == list(range(CELLS))
    assert table.index.duplicated().sum() == REPEATED
    np.testing.assert_allclose(
        table[emb_columns].to_numpy(),
        sorted_by_cell(torch.load(run / "predictions.pt"), "z_nd"),
        atol=1e-6,
    )
    for name, adata in zip(("a.h5ad", "b.h5ad"), two_files, strict=True):
        part = table[table["file"] == name]
        assert part.index.tolist() == adata.obs_names.tolist()
        adata.obs = adata.obs.join(part)
        assert adata.obs["cell_index_n"].notna().all()
        adata.obsm["X_enhanced_dm"] = part.loc[adata.obs_names, emb_columns].to_numpy()
        assert adata.obsm["X_enhanced_dm"].shape == (adata.n_obs, 4)


@pytest.mark.slow
def test_a_checkpoint_names_its_training_classes_on_other_cells(tmp_path: Path) -> None:
    """Predicting cells of two types with a model trained on ten: ten probability columns."""
    fit = enhanced_dm(
        "fit",
        "trainer.max_epochs=1",
        "trainer.limit_train_batches=1",
        "trainer.limit_val_batches=1",
        "stats_report=false",
        cwd=tmp_path,
    )
    assert fit.returncode == 0, fit.stderr
    (fit_run,) = run_directories(tmp_path / "outputs" / "fit")
    adata = pbmc68k()
    classes = list(adata.obs["cell_type"].cat.categories)
    few = adata[adata.obs["cell_type"].isin(["CD14+ Monocyte", "CD19+ B"])].copy()
    few.write_h5ad(tmp_path / "few.h5ad")

    run, _ = predict(
        tmp_path,
        f"ckpt_path={fit_run / 'checkpoints' / 'last.ckpt'}",
        "data=path",
        "data.path=few.h5ad",
        "datamodule.cell_type_key=cell_type",
        "datamodule.total_counts_key=total_counts_all_genes_original",
        # The classifier sizes itself from these cells' 2 types before the checkpoint's 10 are
        # restored, unless told (docs/predict.md).
        "model.n_classes=10",
    )
    table = read_table(run / "predictions.csv")
    assert table.index.tolist() == few.obs_names.tolist()
    assert_classifier_table(table, classes)


@pytest.mark.slow
@pytest.mark.ddp
def test_each_ddp_rank_writes_its_own_sorted_shard(tmp_path: Path) -> None:
    run, _ = predict(tmp_path, "trainer=ddp")
    shards = [read_table(run / f"predictions_{rank}.csv") for rank in (0, 1)]
    for shard in shards:
        assert shard["cell_index_n"].is_monotonic_increasing
    cells = np.concatenate([shard["cell_index_n"].to_numpy() for shard in shards])
    assert sorted(cells.tolist()) == list(range(CELLS))
    adata = pbmc68k()
    names = pd.concat(shards).sort_values("cell_index_n").index
    assert names.tolist() == adata.obs_names.tolist()
    assert_classifier_table(shards[1], list(adata.obs["cell_type"].cat.categories))


def tiny_store() -> CellStore:
    """Two in-memory files of 3 and 2 cells that share the obs name "c0"."""
    counts = np.arange(10, dtype=np.int32).reshape(5, 2)
    files = [
        ad.AnnData(counts[:3], obs=pd.DataFrame(index=["c0", "c1", "c2"])),
        ad.AnnData(counts[3:], obs=pd.DataFrame(index=["c0", "d1"])),
    ]
    for file in files:
        file.var_names = ["g0", "g1"]
    return CellStore(files)


def test_a_shard_in_any_order_comes_out_sorted_with_numbered_classes() -> None:
    prob_nc = torch.tensor([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]])
    outputs = {"cell_index_n": torch.tensor([4, 0, 3]), "prob_nc": prob_nc}
    table = prediction_table(outputs, tiny_store(), class_names=["only one name"])
    assert table["cell_index_n"].tolist() == [0, 3, 4]
    assert table["obs_name"].tolist() == ["c0", "c0", "d1"]
    assert table["file"].tolist() == ["<AnnData #0>", "<AnnData #1>", "<AnnData #1>"]
    assert table["predicted_label"].tolist() == ["class_1", "class_0", "class_0"]
    assert table["prob_class_0"].tolist() == pytest.approx([0.2, 0.6, 0.9])


@pytest.mark.parametrize(
    "outputs",
    [
        {"cell_index_ns": torch.zeros(2, 3, dtype=torch.long), "z_nd": torch.zeros(2, 4)},
        {"cell_index_n": torch.tensor([0, 1]), "loss_n": torch.zeros(2)},
        {"cell_index_n": torch.tensor([0, 1]), "z_nd": torch.zeros(3, 4)},
    ],
    ids=["sequences", "unknown_outputs", "rows_not_cells"],
)
def test_outputs_the_table_cannot_describe_are_refused(outputs: dict[str, torch.Tensor]) -> None:
    with pytest.raises(UnsupportedPredictions):
        prediction_table(outputs, tiny_store())


def test_the_command_skips_the_table_of_other_outputs_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    outputs = {"cell_index_n": torch.tensor([0, 1]), "loss_n": torch.zeros(2)}
    datamodule = SimpleNamespace(store=tiny_store(), categories={})
    with caplog.at_level(logging.WARNING, logger="enhanced_dm.predictions"):
        written = write_prediction_table(outputs, datamodule, None, tmp_path / "p.csv")
    assert written is None and not (tmp_path / "p.csv").exists()
    assert "no prediction table: the predictions hold neither prob_nc nor z_nd" in caplog.text


@pytest.mark.slow
@pytest.mark.ddp
def test_the_autoencoder_predicts_under_ddp(tmp_path: Path) -> None:
    """Its lazy encoder layer is sized in setup, where the trainer is known (in __init__ it was
    not, and DDP failed on the uninitialized parameter)."""
    run, _ = predict(tmp_path, "trainer=ddp", "model=autoencoder")
    shards = [read_table(run / f"predictions_{rank}.csv") for rank in (0, 1)]
    cells = np.concatenate([shard["cell_index_n"].to_numpy() for shard in shards])
    assert sorted(cells.tolist()) == list(range(CELLS))
    embedding = [column for column in shards[0].columns if column.startswith("emb_")]
    assert embedding and list(shards[0].columns) == ["file", "cell_index_n", *embedding]
