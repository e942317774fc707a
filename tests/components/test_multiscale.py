"""MultiScaleDataModule / MultiScaleComponent against scanpy's seurat-flavour highly variable genes,
numpy's SVD and the hierarchical pathway scores, on real data (pbmc68k: 765 genes; wu2020 T cells:
30,727 genes)."""

from __future__ import annotations

import warnings
from typing import Any

import anndata as ad
import numpy as np
import pytest
import scanpy as sc

from enhanced_dm import (
    ConfigError,
    HierarchicalDataModule,
    MultiScaleComponent,
    MultiScaleDataModule,
)
from enhanced_dm.datamodules.base import BaseEnhancedDataModule
from tests.components.reference import all_outputs
from tests.contract import check_component
from tests.helpers import shared_data

PBMC = "singlecell/pbmc68k_reduced_counts.h5ad"
WU2020 = "singlecell/wu2020_tcells_counts.h5ad"
OPTIONS: dict[str, Any] = dict(batch_size=128, val_fraction=0.2, progress=False, seed=0)


def fitted(relative: str, **options: Any) -> MultiScaleDataModule:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        dm = MultiScaleDataModule(str(shared_data(relative)), **{**OPTIONS, **options})
        dm.setup("fit")
    return dm


def log_normalized(relative: str) -> ad.AnnData:
    """scanpy normalize_total(1e4) -> log1p of every cell (float32, as scanpy leaves it)."""
    adata = ad.read_h5ad(shared_data(relative))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        sc.pp.normalize_total(adata, target_sum=1e4)
    sc.pp.log1p(adata)
    adata.X = np.asarray(adata.X.todense() if hasattr(adata.X, "todense") else adata.X)
    return adata


@pytest.mark.parametrize(("relative", "n_top"), [(PBMC, 128), (WU2020, 128), (WU2020, 2000)])
def test_molecular_genes_equal_scanpys_seurat_selection(relative: str, n_top: int) -> None:
    dm = fitted(relative, molecular_scale_dim=n_top, cellular_scale_dim=8, num_scales=1)
    adata = log_normalized(relative)
    train = adata[np.sort(dm.split["train"])].copy()
    reference = sc.pp.highly_variable_genes(
        train, flavor="seurat", n_top_genes=n_top, inplace=False
    )
    expected = list(train.var_names[reference["highly_variable"].to_numpy()])
    assert dm.molecular_gene_names == expected
    # z-scored with the train statistics (scanpy.pp.scale: ddof=1); float32 tolerance
    out = all_outputs(dm, ["x_molecular_nd"])["x_molecular_nd"]
    values = adata[:, expected].X.astype(np.float64)
    mean = values[dm.split["train"]].mean(0)
    std = values[dm.split["train"]].std(0, ddof=1)
    np.testing.assert_allclose(out, (values - mean) / np.where(std > 0, std, 1), atol=2e-5)


def test_cellular_components_equal_numpy_svd_up_to_sign() -> None:
    dm = fitted(WU2020, cellular_scale_dim=20, cellular_hvg=2000)
    adata = log_normalized(WU2020)
    train = adata[np.sort(dm.split["train"])].copy()
    reference = sc.pp.highly_variable_genes(train, flavor="seurat", n_top_genes=2000, inplace=False)
    genes = np.flatnonzero(reference["highly_variable"].to_numpy())
    values = adata.X[:, genes].astype(np.float64)
    mean = values[dm.split["train"]].mean(0)
    _, singular, vt = np.linalg.svd(values[dm.split["train"]] - mean, full_matrices=False)
    std = singular[:20] / np.sqrt(len(dm.split["train"]) - 1)
    expected = (values - mean) @ vt[:20].T / std
    out = all_outputs(dm, ["x_cellular_nd"])["x_cellular_nd"]
    signs = np.sign((out * expected).sum(0))
    np.testing.assert_allclose(out, expected * signs, atol=1e-4)
    ratios = dm.get_multiscale_stats()["cellular"]["variance_explained"]
    total = ((values[dm.split["train"]] - mean) ** 2).sum() / (len(dm.split["train"]) - 1)
    np.testing.assert_allclose(ratios, std**2 / total, rtol=1e-6)


def test_pathway_scale_equals_the_hierarchical_scores() -> None:
    dm = fitted(PBMC, pathway_scale_dim=64, cellular_scale_dim=8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        hierarchical = HierarchicalDataModule(str(shared_data(PBMC)), **OPTIONS)
    ours = all_outputs(dm, ["x_pathway_nd", "pathway_scores_np"])
    theirs = all_outputs(hierarchical, ["pathway_scores_np"])["pathway_scores_np"]
    np.testing.assert_array_equal(ours["pathway_scores_np"], theirs)
    np.testing.assert_array_equal(ours["x_pathway_nd"], theirs[:, :64])


def test_num_scales_hierarchy_levels_and_caps() -> None:
    dm = fitted(PBMC, num_scales=2, num_hierarchy_levels=2, cellular_scale_dim=8)
    batch = dm.normalize(dm.store.read(np.arange(16)))
    assert {"x_molecular_nd", "x_pathway_nd"} <= set(batch) and "x_cellular_nd" not in batch
    levels = dm.hierarchy_levels
    assert [level.name for level in levels] == ["gene", "pathway"]
    assert levels[1].membership.shape == (len(dm.pathway_names), dm.n_genes)
    full = fitted(PBMC, cellular_scale_dim=8)
    compartments = full.hierarchy_levels[2]
    dense = full.pathway_membership_pg.to_dense()
    expected = (full.compartment_membership_kg @ dense.T) / dense.sum(1)
    np.testing.assert_allclose(compartments.membership.numpy(), expected.numpy(), rtol=1e-6)
    with pytest.warns(UserWarning, match="x_cellular_nd has 765 columns"):
        MultiScaleDataModule(str(shared_data(PBMC)), **OPTIONS, cellular_scale_dim=1000).setup(
            "fit"
        )
    with pytest.warns(UserWarning, match="x_pathway_nd has 278 columns"):
        MultiScaleDataModule(
            str(shared_data(PBMC)), **OPTIONS, cellular_scale_dim=8, pathway_scale_dim=400
        ).setup("fit")
    with pytest.raises(ConfigError, match="num_scales"):
        MultiScaleDataModule(str(shared_data(PBMC)), num_scales=4)


def test_the_component_contract() -> None:
    def make_dm(components: Any) -> BaseEnhancedDataModule:
        return HierarchicalDataModule(str(shared_data(PBMC)), components=components, **OPTIONS)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        check_component(lambda: MultiScaleComponent(cellular_scale_dim=16), make_dm)
