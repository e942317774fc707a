"""Every example of the reference README (../shared/reference/enhanced-loaders-README.md) runs here,
with only its imports and file paths changed. Names the reference leaves undefined (``cfg``,
``dataset``, ``pathway_info``, ``compartment_info``) are defined before each example, from the
bundled real data."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from omegaconf import DictConfig, OmegaConf

from enhanced_dm.datasets import HSMM_TIMECOURSE_FILE, bundled_path
from tests.helpers import shared_data

PATHWAYS = shared_data("genesets/go_bp_human.gmt")
COMPARTMENTS = shared_data("genesets/go_cc_compartments_human.tsv")
INTERACTIONS = shared_data("networks/pathwaycommons_controls_expression_of.tsv.gz")
GENE_TYPES = shared_data("networks/tf_list_human_go0003700.txt")


@pytest.fixture(autouse=True)
def _quiet() -> Iterator[None]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        yield


def pbmc_cfg(**more: object) -> DictConfig:
    """A user's config: the bundled PBMCs and the obs columns the examples need."""
    return OmegaConf.create(
        {
            "data": str(shared_data("singlecell/pbmc68k_reduced_counts.h5ad")),
            "cell_type_key": "cell_type",
            "state_key": "phase",
            "progress": False,
            **more,
        }
    )


def first_batch(loader: object) -> dict[str, torch.Tensor]:
    from torch.utils.data import DataLoader

    return next(iter(DataLoader(loader.dataset(), batch_size=32, collate_fn=loader)))  # type: ignore[attr-defined]


def test_base_enhanced_loader() -> None:
    cfg = OmegaConf.create(
        {
            "data": str(shared_data("singlecell/wu2020_tcells_counts.h5ad")),
            "batch_key": "batch",
            "cell_type_key": "cell_type",
            "progress": False,
        }
    )
    # --- reference example (import changed) ---
    from enhanced_dm import BaseEnhancedLoader

    loader = BaseEnhancedLoader(
        cfg=cfg,
        normalization_type="z_score",
        per_gene_normalization=True,
        per_cell_normalization=True,
        robust_normalization=False,
        quantile_normalization=False,
        batch_aware_normalization=True,
        biological_normalization=True,
    )
    # --- end ---
    assert first_batch(loader)["x_ng"].shape[1] == len(loader.var_names)
    assert "batch_cell_type" in loader.datamodule.pipeline.names


def test_hierarchical_data_loader() -> None:
    cfg = pbmc_cfg()
    from enhanced_dm import HierarchicalDataLoader

    loader = HierarchicalDataLoader(
        cfg=cfg,
        num_pathways=1000,
        num_compartments=5,
        pathway_annotation_file=PATHWAYS,
        compartment_annotation_file=COMPARTMENTS,
    )
    batch = first_batch(loader)
    assert batch["compartment_x_nk"].shape == (32, 5)
    assert batch["pathway_scores_np"].shape[1] == len(loader.datamodule.pathway_names) > 0


def test_temporal_data_loader() -> None:
    hsmm = str(bundled_path(HSMM_TIMECOURSE_FILE))
    cfg = OmegaConf.create({"data": hsmm, "time_key": "Hours", "progress": False})
    from enhanced_dm import TemporalDataLoader

    loader = TemporalDataLoader(
        cfg=cfg, time_steps=5, max_sequence_length=100, temporal_sampling_strategy="uniform"
    )
    assert first_batch(loader)["time_step_n"].max() < loader.datamodule.n_time_steps


def test_regulatory_data_loader() -> None:
    cfg = pbmc_cfg()
    from enhanced_dm import RegulatoryDataLoader

    loader = RegulatoryDataLoader(
        cfg=cfg,
        interaction_matrix_file=INTERACTIONS,
        gene_type_annotation_file=GENE_TYPES,
        regulatory_strength_threshold=0.5,
    )
    assert first_batch(loader)["tf_activity_nr"].shape == (
        32,
        len(loader.datamodule.regulator_names),
    )


def test_memory_data_loader() -> None:
    cfg = pbmc_cfg()
    from enhanced_dm import MemoryDataLoader

    loader = MemoryDataLoader(
        cfg=cfg,
        memory_dim=512,
        memory_size=1000,
        num_memory_types=5,
        num_epigenetic_states=3,
        memory_decay_rate=0.9,
    )
    assert first_batch(loader)["memory_embedding_nd"].shape[0] == 32


def test_stochastic_data_loader() -> None:
    cfg = pbmc_cfg()
    from enhanced_dm import StochasticDataLoader

    loader = StochasticDataLoader(
        cfg=cfg,
        noise_dim=64,
        num_noise_types=3,
        intrinsic_noise_dim=32,
        extrinsic_noise_dim=32,
        noise_strength_range=(0.1, 0.9),
    )
    assert first_batch(loader)["noise_nd"].shape == (32, 64)


def test_resource_data_loader() -> None:
    cfg = pbmc_cfg()
    from enhanced_dm import ResourceDataLoader

    loader = ResourceDataLoader(
        cfg=cfg,
        resource_dim=32,
        num_resource_types=5,
        energy_dim=16,
        nutrient_dim=16,
        resource_efficiency_range=(0.1, 1.0),
    )
    assert first_batch(loader)["resource_nd"].shape == (32, 32)


def test_multiscale_data_loader() -> None:
    cfg = pbmc_cfg()
    from enhanced_dm import MultiScaleDataLoader

    loader = MultiScaleDataLoader(
        cfg=cfg,
        molecular_scale_dim=128,
        pathway_scale_dim=256,
        cellular_scale_dim=512,
        num_hierarchy_levels=3,
        num_scales=3,
    )
    batch = first_batch(loader)
    assert batch["x_molecular_nd"].shape == (32, 128)
    assert batch["x_pathway_nd"].shape == (32, 256)
    assert batch["x_cellular_nd"].shape == (32, 512)


def full_virtual_cell_loader() -> object:
    cfg = pbmc_cfg(time_key="S_score")
    from enhanced_dm import FullVirtualCellLoader

    loader = FullVirtualCellLoader(
        cfg=cfg,
        num_pathways=1000,
        num_compartments=5,
        time_steps=5,
        memory_dim=512,
        noise_dim=64,
        resource_dim=32,
        pathway_annotation_file=PATHWAYS,
        compartment_annotation_file=COMPARTMENTS,
    )
    return loader


def test_full_virtual_cell_loader_and_the_statistics_example() -> None:
    loader = full_virtual_cell_loader()
    first_batch(loader)
    # --- "Statistics and Monitoring" ---
    stats = loader.get_normalization_stats()
    hierarchical_stats = loader.get_pathway_stats()
    temporal_stats = loader.get_temporal_stats()
    regulatory_stats = loader.get_regulatory_stats()
    memory_stats = loader.get_memory_stats()
    stochastic_stats = loader.get_stochastic_stats()
    resource_stats = loader.get_resource_stats()
    multiscale_stats = loader.get_multiscale_stats()
    comprehensive_stats = loader.get_comprehensive_stats()
    loader.reset_normalization_stats()
    # --- end ---
    every = [stats, hierarchical_stats, temporal_stats, regulatory_stats, memory_stats]
    every += [stochastic_stats, resource_stats, multiscale_stats, comprehensive_stats]
    assert all(isinstance(value, dict) and value for value in every)
    assert stats["z_score"]["cells_seen"] == 32
    assert comprehensive_stats["temporal"] == {**temporal_stats, **comprehensive_stats["temporal"]}
    assert loader.get_normalization_stats() == {}


def test_the_debugging_example(caplog: pytest.LogCaptureFixture) -> None:
    loader = full_virtual_cell_loader()
    # --- "Debugging" ---
    logging.basicConfig(level=logging.DEBUG)
    stats = loader.get_normalization_stats()
    print(f"Normalization stats: {stats}")
    loader.reset_normalization_stats()
    first_batch(loader)  # ... training ...
    stats = loader.get_normalization_stats()
    print(f"Updated stats: {stats}")
    # --- end ---
    assert stats["z_score"]["cells_seen"] == 32


def test_integration_with_enhanced_models(tmp_path: Path) -> None:
    from enhanced_dm import HierarchicalDataModule

    cfg = pbmc_cfg(model={"batch_size": 4})
    reference_dm = HierarchicalDataModule(
        cfg.data, pathway_annotation_file=PATHWAYS, compartment_annotation_file=COMPARTMENTS
    )
    reference_dm.setup("fit")
    pathway_info = reference_dm.pathway_membership_pg
    compartment_info = reference_dm.compartment_membership_kg
    # --- "Integration with Enhanced Models" (imports and file names changed) ---
    from torch.utils.data import DataLoader

    from enhanced_dm import HierarchicalDataLoader
    from enhanced_dm.models import HierarchicalGeneModel

    # Create enhanced model
    model = HierarchicalGeneModel(
        token_dim=512,
        d_model=512,
        nhead=8,
        d_hid=2048,
        nlayers=6,
        output_dim=128,
        pathway_info=pathway_info,
        compartment_info=compartment_info,
    )

    # Create enhanced loader
    loader = HierarchicalDataLoader(
        cfg=cfg,
        num_pathways=1000,
        num_compartments=5,
        pathway_annotation_file=PATHWAYS,
        compartment_annotation_file=COMPARTMENTS,
    )
    dataset = loader.dataset()

    # Use in training
    dataloader = DataLoader(
        dataset, batch_size=cfg.model.batch_size, collate_fn=loader, num_workers=4
    )
    # --- end ---
    batch = next(iter(dataloader))
    model.eval()
    with torch.no_grad():
        embedding = model(batch)
    assert embedding.shape == (4, 128) and torch.isfinite(embedding).all()
    assert loader.get_normalization_stats()["z_score"]["cells_seen"] >= 4  # from the workers
