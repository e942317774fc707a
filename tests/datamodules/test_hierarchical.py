"""HierarchicalDataModule against scanpy / numpy references on real data; state, trainer, loader."""

from __future__ import annotations

import functools

import lightning as L
import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.utils import instantiate
from torch.utils.data import DataLoader

from enhanced_dm.cli import config_dir, register_schemas
from enhanced_dm.datamodules.hierarchical import HierarchicalDataModule
from enhanced_dm.datasets import bundled_path
from enhanced_dm.loaders import HierarchicalDataLoader
from tests.components.reference import (
    PBMC,
    all_outputs,
    decoupler_aucell,
    gmt_sets,
    membership,
    normalized_pbmc,
    train_zscore,
)
from tests.helpers import shared_data

OUTPUT_KEYS = (
    "x_ng",
    "counts_ng",
    "pathway_scores_np",
    "compartment_fraction_nk",
    "compartment_x_nk",
)
# float32 pipeline vs float64 reference; pathway std is ~0.2, so 1e-5 leaves a 3x margin.
TOLERANCE = 1e-5


def make_dm(**options) -> HierarchicalDataModule:
    defaults = dict(
        data=shared_data(PBMC), val_fraction=0.2, test_fraction=0.1, batch_size=128, progress=False
    )
    return HierarchicalDataModule(**{**defaults, **options})


@functools.cache
def fitted_dm() -> tuple[HierarchicalDataModule, dict[str, np.ndarray]]:
    """The full GO BP file (4,463 sets), at most 100 pathways, every cell's outputs."""
    dm = make_dm(
        pathway_annotation_file=str(shared_data("genesets/go_bp_human.gmt")), num_pathways=100
    )
    dm.setup("fit")
    return dm, all_outputs(dm, OUTPUT_KEYS)


def test_pathway_scores_equal_scanpy_reference() -> None:
    dm, out = fitted_dm()
    train = dm.split["train"]
    x = normalized_pbmc(shared_data(PBMC), train)
    np.testing.assert_allclose(out["x_ng"], x, atol=1e-4)

    sets = gmt_sets(shared_data("genesets/go_bp_human.gmt"))
    names = list(sets)
    matrix, before = membership(sets, dm.var_names)
    after = matrix.sum(axis=1)
    eligible = np.flatnonzero((after >= 15) & (after <= 500))
    best = sorted(eligible, key=lambda row: -after[row] / before[row])[:100]
    kept = sorted(best)
    assert dm.pathway_names == [names[row] for row in kept]

    means = np.stack([x[:, matrix[row]].mean(axis=1) for row in kept], axis=1)
    expected = train_zscore(means, train)
    assert np.abs(out["pathway_scores_np"] - expected).max() < TOLERANCE
    assert np.isfinite(out["pathway_scores_np"]).all()


def test_mean_score_is_the_plain_pathway_mean() -> None:
    dm = make_dm(pathway_score="mean", min_pathway_size=30, num_compartments=2)
    dm.setup("fit")
    out = all_outputs(dm, ["x_ng", "pathway_scores_np"])
    sets = gmt_sets(bundled_path("go_bp_pbmc68k_subset.gmt"))
    matrix, _ = membership(sets, dm.var_names)
    kept = matrix[matrix.sum(axis=1) >= 30]
    assert len(dm.pathway_names) == len(kept)
    expected = np.stack([out["x_ng"][:, row].mean(axis=1) for row in kept], axis=1)
    np.testing.assert_allclose(out["pathway_scores_np"], expected, atol=1e-6)
    assert "pathway_zscore" not in dm.pipeline.names


def test_aucell_score_equals_the_decoupler_recipe() -> None:
    dm = make_dm(pathway_score="aucell", num_pathways=12, num_compartments=2)
    dm.setup("fit")
    assert "pathway_zscore" not in dm.pipeline.names  # AUCell scores are not standardized
    out = dm.normalize(dm.store.read(np.arange(60)))
    counts = out["counts_ng"].numpy()
    n_up = int(np.ceil(0.05 * dm.n_genes))
    expected = decoupler_aucell(counts, dm.pathway_mask_pg.numpy(), n_up)
    np.testing.assert_allclose(out["pathway_scores_np"].numpy(), expected, atol=1e-6)
    assert expected.min() >= 0 and expected.max() <= 1 and expected.max() > 0
    # Ranks within a cell: the log-normalized expression gives the same scores as the counts.
    log_normalized = np.log1p(counts / counts.sum(1, keepdims=True) * 1e4)
    np.testing.assert_allclose(
        decoupler_aucell(log_normalized, dm.pathway_mask_pg.numpy(), n_up), expected
    )


def test_compartment_outputs_equal_numpy_reference() -> None:
    dm, out = fitted_dm()
    sets = gmt_sets(bundled_path("go_cc_compartments_human.gmt"))
    matrix, _ = membership(sets, dm.var_names)
    size = matrix.sum(axis=1)
    kept = sorted(np.argsort(-size, kind="stable")[:5])
    assert dm.compartment_names == [list(sets)[row] for row in kept]

    counts = out["counts_ng"].astype(np.float64)
    sums = counts @ matrix[kept].T.astype(np.float64)
    fraction = sums / counts.sum(axis=1, keepdims=True)
    log = np.log(sums + 1.0)
    clr = train_zscore(log - log.mean(axis=1, keepdims=True), dm.split["train"])
    np.testing.assert_allclose(out["compartment_fraction_nk"], fraction, atol=1e-6)
    assert np.abs(out["compartment_x_nk"] - clr).max() < TOLERANCE


def test_constants_are_consistent_attributes() -> None:
    dm, _ = fitted_dm()
    n_pathways, n_genes = len(dm.pathway_names), dm.n_genes
    assert dm.pathway_membership_pg.shape == (n_pathways, n_genes)
    assert dm.compartment_membership_kg.shape == (5, n_genes)
    assert torch.equal(dm.pathway_membership_pg.to_dense().bool(), dm.pathway_mask_pg)
    assert dm.pathway_overlap_pp.shape == (n_pathways, n_pathways)
    assert torch.equal(dm.pathway_overlap_pp, dm.pathway_overlap_pp.T)
    index_pm = dm.pathway_gene_index_pm
    assert (index_pm >= 0).sum(1).tolist() == dm.pathway_mask_pg.sum(1).tolist()


def test_pathway_stats_report_selection_and_running_scores() -> None:
    dm = make_dm(num_pathways=50)
    dm.setup("fit")
    stats = dm.get_pathway_stats()
    assert stats["pathways_read"] == 278 and stats["pathways_kept"] == 50
    assert stats["pathways_dropped"] == {"not_in_top_num_pathways": 228}
    assert stats["scores"] == {}  # no batch normalized yet
    assert stats["compartments"]["compartments_kept"] == 5
    assert stats["compartments"]["compartments_dropped"] == {"not_in_top_num_compartments": 13}

    train = dm.split["train"]
    dm.normalize(dm.store.read(train))
    stats = dm.get_pathway_stats()
    n = len(train)
    # Every pathway has mean 0 and sample std 1 on the train cells, so the pooled values have
    # mean 0 and population std sqrt((n - 1) / n).
    assert stats["scores"]["cells_seen"] == n
    assert abs(stats["scores"]["mean"]) < 1e-5
    assert stats["scores"]["std"] == pytest.approx(np.sqrt((n - 1) / n), abs=1e-5)
    assert stats["compartments"]["clr"]["std"] == pytest.approx(np.sqrt((n - 1) / n), abs=1e-5)
    assert 0 < stats["compartments"]["fractions"]["mean"] < 1
    for key, value in dm.component_stats("pathway").items():
        assert stats[key] == value


def test_state_dict_restores_constants_and_batches_without_reading_the_files(monkeypatch) -> None:
    dm, out = fitted_dm()
    state = dm.state_dict()
    assert set(state["components"]) == {"pathway", "compartment"}
    monkeypatch.setattr(
        "enhanced_dm.fitting.fit_or_load.fit_pipeline",
        lambda *a, **k: pytest.fail("a restored DataModule must not refit"),
    )
    restored = make_dm(
        pathway_annotation_file="/moved/go_bp_human.gmt",
        compartment_annotation_file="/moved/compartments.gmt",
        num_pathways=100,
    )
    restored.load_state_dict(state)
    restored.setup("fit")
    assert restored.pathway_names == dm.pathway_names
    assert restored.compartment_names == dm.compartment_names
    assert torch.equal(restored.pathway_mask_pg, dm.pathway_mask_pg)
    assert torch.equal(restored.pathway_overlap_pp, dm.pathway_overlap_pp)
    assert torch.equal(
        restored.compartment_membership_kg.to_dense(), dm.compartment_membership_kg.to_dense()
    )
    again = all_outputs(restored, OUTPUT_KEYS)
    for key in OUTPUT_KEYS:
        assert np.array_equal(again[key], out[key]), key


def test_ensembl_data_through_gene_symbol_key() -> None:
    dm = HierarchicalDataModule(
        shared_data("singlecell/hsmm_myoblast_timecourse_fpkm.h5ad"),
        gene_symbol_key="gene_short_name",
        num_pathways=20,
        val_fraction=0.0,
        progress=False,
    )
    dm.setup("fit")
    out = dm.normalize(dm.store.read(np.arange(32)))
    assert out["pathway_scores_np"].shape == (32, 20)
    assert out["compartment_x_nk"].shape == (32, 5)
    assert all(torch.isfinite(out[key]).all() for key in OUTPUT_KEYS[2:])


class PathwayModel(L.LightningModule):
    """Predicts the cell type from the pathway scores and compartment features only."""

    def __init__(self, n_pathways: int, n_compartments: int, n_classes: int) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(n_pathways + n_compartments, n_classes)

    def training_step(self, batch, batch_idx):
        features = torch.cat([batch["pathway_scores_np"], batch["compartment_x_nk"]], dim=1)
        return torch.nn.functional.cross_entropy(self.layer(features), batch["cell_type_n"])

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_trainer_fast_dev_run_feeds_pathway_scores() -> None:
    dm = make_dm(cell_type_key="cell_type", num_pathways=40)
    dm.setup("fit")
    model = PathwayModel(
        len(dm.pathway_names), len(dm.compartment_names), len(dm.categories["cell_type"])
    )
    before = model.layer.weight.detach().clone()
    trainer = L.Trainer(
        fast_dev_run=True,
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(model, datamodule=dm)
    assert not torch.equal(before, model.layer.weight)


def test_collate_loader_gives_the_same_batches() -> None:
    loader = HierarchicalDataLoader(
        data=str(shared_data(PBMC)), num_pathways=30, val_fraction=0.2, progress=False
    )
    dataloader = DataLoader(loader.dataset("val"), batch_size=16, collate_fn=loader)
    batch = next(iter(dataloader))
    assert batch["pathway_scores_np"].shape == (16, 30)
    assert batch["compartment_fraction_nk"].shape == (16, 5)
    dm = loader.datamodule
    direct = dm.normalize(dm.store.read(batch["cell_index_n"].numpy()))
    for key in ("pathway_scores_np", "compartment_fraction_nk", "compartment_x_nk"):
        torch.testing.assert_close(batch[key], direct[key])
    assert loader.get_pathway_stats()["pathways_kept"] == 30
    assert loader.get_compartment_stats()["compartments_kept"] == 5


def test_hydra_config_builds_it_with_the_bundled_files() -> None:
    register_schemas()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        cfg = compose("config", overrides=["datamodule=hierarchical", "datamodule.num_pathways=25"])
    dm = instantiate(cfg.datamodule, progress=False)
    assert isinstance(dm, HierarchicalDataModule)
    dm.setup("fit")
    assert len(dm.pathway_names) == 25 and len(dm.compartment_names) == 5
    assert dm.pathways.pathway_annotation_file == "go_bp_pbmc68k_subset.gmt"
    assert dm.compartments.compartment_annotation_file == "go_cc_compartments_human.gmt"
    assert dm.cell_type_key == "cell_type"  # the data config still applies


def test_stats_cache_key_follows_the_pathway_selection(tmp_path, monkeypatch) -> None:
    first = make_dm(num_pathways=10, stats_cache_dir=tmp_path)
    first.setup("fit")
    monkeypatch.setattr(
        "enhanced_dm.fitting.fit_or_load.fit_pipeline",
        lambda *a, **k: pytest.fail("refitted instead of reading the cache"),
    )
    second = make_dm(num_pathways=10, stats_cache_dir=tmp_path)
    second.setup("fit")
    assert second.stats_cache_path == first.stats_cache_path
    with pytest.raises(pytest.fail.Exception, match="refitted"):
        make_dm(num_pathways=11, stats_cache_dir=tmp_path).setup("fit")
