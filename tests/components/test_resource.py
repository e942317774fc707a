"""ResourceDataModule / ResourceComponent against scanpy, numpy and scikit-learn-style references
on real data (pbmc68k: one mitochondrial gene, MT-ND3; wu2020 T cells: none)."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scanpy as sc

from enhanced_dm import (
    ConfigError,
    DataFileError,
    FittingError,
    ResourceComponent,
    ResourceDataLoader,
    ResourceDataModule,
)
from enhanced_dm.components.resource import resource_widths
from enhanced_dm.datamodules.base import BaseEnhancedDataModule
from tests.components.reference import all_outputs
from tests.contract import assert_same, check_component
from tests.helpers import shared_data

PBMC = "singlecell/pbmc68k_reduced_counts.h5ad"
WU2020 = "singlecell/wu2020_tcells_counts.h5ad"
GO_BP = "genesets/go_bp_human.gmt"
# val_fraction=0: every cell is a train cell, as scanpy fits on every cell it is given.
RAW: dict[str, Any] = dict(
    batch_size=128, val_fraction=0.0, progress=False, seed=0, per_gene_normalization=False
)


def outputs(relative: str, keys: list[str], **options: Any) -> tuple[ResourceDataModule, dict]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        dm = ResourceDataModule(str(shared_data(relative)), **{**RAW, **options})
        dm.setup("fit")
    return dm, all_outputs(dm, keys)


def qc_metrics(relative: str) -> pd.DataFrame:
    adata = ad.read_h5ad(shared_data(relative))
    adata.var["mt"] = adata.var_names.str.startswith(("MT-", "mt-"))
    adata.var["ribo"] = adata.var_names.str.startswith(("RPS", "RPL", "Rps", "Rpl"))
    qc, _ = sc.pp.calculate_qc_metrics(
        adata, qc_vars=["mt", "ribo"], percent_top=None, log1p=False, inplace=False
    )
    return qc


def log_normalized(relative: str) -> ad.AnnData:
    """scanpy normalize_total(1e4) -> log1p, dense float64 (what regress_out is run on)."""
    adata = ad.read_h5ad(shared_data(relative))
    adata.X = np.asarray(adata.X.todense() if hasattr(adata.X, "todense") else adata.X, np.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        sc.pp.normalize_total(adata, target_sum=1e4)
    sc.pp.log1p(adata)
    return adata


def test_covariates_equal_scanpy_qc_metrics() -> None:
    dm, out = outputs(PBMC, ["covariates_nc", "allocation_na"])
    qc = qc_metrics(PBMC)
    covariates = out["covariates_nc"]
    assert dm.covariate_names == ["log_total_counts", "log_genes_detected", "pct_mito", "pct_ribo"]
    # exact: the same float64 ratios, cast to float32 once
    assert qc["pct_counts_mt"].max() > 0
    np.testing.assert_array_equal(covariates[:, 2], qc["pct_counts_mt"].to_numpy(np.float32))
    np.testing.assert_array_equal(covariates[:, 3], qc["pct_counts_ribo"].to_numpy(np.float32))
    genes = np.log1p(qc["n_genes_by_counts"].to_numpy(np.float64)).astype(np.float32)
    np.testing.assert_array_equal(covariates[:, 1], genes)
    # the file holds only these 765 genes, so its library size is the matrix's row sum
    np.testing.assert_allclose(covariates[:, 0], np.log(qc["total_counts"]), rtol=1e-6)
    allocation = out["allocation_na"]
    np.testing.assert_allclose(allocation.sum(1), 1.0, rtol=1e-6)
    np.testing.assert_allclose(allocation[:, 0] * 100, covariates[:, 2], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(allocation[:, 1] * 100, covariates[:, 3], rtol=1e-5, atol=1e-5)
    counts = dm.get_resource_stats()["genes"]["allocation"]
    assert sum(counts.values()) == dm.n_genes and counts["energy"] > 10


def test_regress_out_equals_scanpy_on_numeric_covariates() -> None:
    _, out = outputs(PBMC, ["x_ng"], regress_out=("log_total_counts", "pct_mito"))
    qc = qc_metrics(PBMC)
    adata = log_normalized(PBMC)
    adata.obs["log_total_counts"] = np.log(qc["total_counts"].to_numpy())
    adata.obs["pct_mito"] = qc["pct_counts_mt"].to_numpy()
    sc.pp.regress_out(adata, ["log_total_counts", "pct_mito"])
    np.testing.assert_allclose(out["x_ng"], adata.X, rtol=0, atol=1e-4)


def test_constant_pct_mito_is_dropped_with_a_warning_and_the_rest_equals_scanpy() -> None:
    with pytest.warns(UserWarning, match=r"\['pct_mito'\] constant on the train split"):
        dm = ResourceDataModule(
            str(shared_data(WU2020)), regress_out=("log_total_counts", "pct_mito"), **RAW
        )
        dm.setup("fit")
    out = all_outputs(dm, ["x_ng"])
    assert dm.get_resource_stats()["regression"]["dropped"] == ["pct_mito"]
    adata = log_normalized(WU2020)
    total = np.asarray(ad.read_h5ad(shared_data(WU2020)).X.sum(1)).ravel()
    adata.obs["log_total_counts"] = np.log(total)
    sc.pp.regress_out(adata, ["log_total_counts"])
    np.testing.assert_allclose(out["x_ng"], adata.X, rtol=0, atol=1e-4)


def test_regress_out_of_one_categorical_key_equals_scanpy() -> None:
    dm, out = outputs(PBMC, ["x_ng"], regress_out=("phase",))
    adata = log_normalized(PBMC)
    assert isinstance(adata.obs["phase"].dtype, pd.CategoricalDtype)
    assert dm.get_resource_stats()["regression"]["design"] == ["phase=G2M", "phase=S"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sc.pp.regress_out(adata, "phase", n_jobs=1)
    # scanpy returns genes constant over all cells unchanged; here they are centred (0)
    constant = np.all(adata.X[0] == adata.X, axis=0)
    np.testing.assert_allclose(out["x_ng"][:, ~constant], adata.X[:, ~constant], atol=1e-4)
    np.testing.assert_allclose(out["x_ng"][:, constant], 0.0, atol=1e-6)


def test_mixed_numeric_and_categorical_covariates_equal_numpy_lstsq() -> None:
    dm, out = outputs(WU2020, ["x_ng", "covariates_nc"], regress_out=("log_total_counts", "tissue"))
    adata = log_normalized(WU2020)
    tissue = adata.obs["tissue"].astype(str)
    levels = sorted(tissue.unique())
    assert dm.get_resource_stats()["regression"]["design"] == [
        "log_total_counts",
        *(f"tissue={level}" for level in levels[1:]),
    ]
    design = np.column_stack(
        [np.ones(adata.n_obs), out["covariates_nc"][:, 0].astype(np.float64)]
        + [(tissue == level).to_numpy(np.float64) for level in levels[1:]]
    )
    coef, *_ = np.linalg.lstsq(design, adata.X, rcond=None)
    np.testing.assert_allclose(out["x_ng"], adata.X - design @ coef, rtol=0, atol=1e-4)
    r2 = dm.get_resource_stats()["regression"]["r2"]
    assert 0 < r2["mean"] < 1


def test_pca_blocks_equal_a_numpy_svd_of_the_train_cells() -> None:
    options = {**RAW, "val_fraction": 0.25, "per_gene_normalization": True}
    dm, out = outputs(WU2020, ["x_ng", "resource_nd"], **options)
    train = np.zeros(dm.store.n_obs, dtype=bool)
    train[dm.split["train"]] = True
    names = dm.resource_names
    embedding = dm.resource.step("resource_embedding")
    genes = dm.resource.genes
    assert genes is not None
    for block, members in (("energy", genes.energy_genes), ("nutrient", genes.nutrient_genes)):
        columns = [i for i, name in enumerate(names) if name.startswith(f"{block}_pc")]
        x = out["x_ng"][:, members.numpy()].astype(np.float64)
        mean = x[train].mean(0)
        _, singular, vt = np.linalg.svd(x[train] - mean, full_matrices=False)
        k = len(columns)
        std = singular[:k] / np.sqrt(train.sum() - 1)
        expected = (x - mean) @ vt[:k].T / std
        ours = out["resource_nd"][:, columns].astype(np.float64)
        signs = np.sign((ours * expected).sum(0))
        np.testing.assert_allclose(ours * signs, expected, rtol=0, atol=1e-4)
        ratios = dm.get_resource_stats()["pca"][block]["variance_explained"]
        total = ((x[train] - mean) ** 2).sum() / (train.sum() - 1)
        np.testing.assert_allclose(ratios, std**2 / total, rtol=1e-8)
    np.testing.assert_allclose(out["resource_nd"][train, :4].mean(0), 0.0, atol=1e-5)
    assert len(names) == 32 and names[:4] == dm.covariate_names
    assert len(embedding.names) == 32


def test_resource_widths_follow_the_reference_defaults() -> None:
    with pytest.warns(UserWarning, match="trimmed to"):
        assert resource_widths(32, 5, 16, 16) == (
            ["capture", "mitochondrial", "translation", "energy", "nutrient"],
            4,
            {"energy": 14, "nutrient": 14},
        )
    with pytest.warns(UserWarning, match="trimmed to"):
        assert resource_widths(31, 5, 16, 16)[2] == {"energy": 14, "nutrient": 13}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert resource_widths(4, 3, 16, 16) == (
            ["capture", "mitochondrial", "translation"],
            4,
            {},
        )
    with pytest.raises(ConfigError, match="resource_dim=3 cannot hold the 4 covariate columns"):
        resource_widths(3, 4, 0, 0)


def test_efficiency_is_the_library_size_over_the_train_median_clipped() -> None:
    dm, out = outputs(
        PBMC, ["efficiency_n"], val_fraction=0.2, resource_efficiency_range=(0.5, 1.5)
    )
    total = np.asarray(ad.read_h5ad(shared_data(PBMC)).X.sum(1)).ravel().astype(np.float64)
    train = dm.split["train"]
    median = np.median(total[train][total[train] > 0])
    expected = np.clip(total / median, 0.5, 1.5)
    np.testing.assert_allclose(out["efficiency_n"], expected, rtol=1e-6)
    stats = dm.get_resource_stats()["efficiency"]
    assert stats["median_library_size"] == median
    relative = total[train] / median
    assert stats["fraction_clipped_low"] == pytest.approx(np.mean(relative < 0.5))
    assert stats["fraction_clipped_high"] == pytest.approx(np.mean(relative > 1.5))
    distributions = dm.get_resource_stats()["covariate_distributions"]
    assert distributions["library_size"]["quantiles"]["q50"] == np.median(total[train])


def test_sparse_counts_give_the_dense_results() -> None:
    _, dense = outputs(PBMC, ["covariates_nc", "allocation_na", "resource_nd"])
    _, sparse = outputs(PBMC, ["covariates_nc", "allocation_na", "resource_nd"], dense_counts=False)
    for key in ("covariates_nc", "allocation_na", "resource_nd"):
        np.testing.assert_array_equal(sparse[key], dense[key], err_msg=key)


def test_the_component_contract_and_the_reference_loader() -> None:
    def make_dm(components):
        return BaseEnhancedDataModule(
            str(shared_data(PBMC)), components=components, **{**RAW, "val_fraction": 0.2}
        )

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        check_component(
            lambda: ResourceComponent(regress_out=("log_total_counts", "phase")), make_dm
        )
        loader = ResourceDataLoader(
            {"data": str(shared_data(PBMC))},
            resource_dim=32,
            num_resource_types=5,
            energy_dim=16,
            nutrient_dim=16,
            resource_efficiency_range=(0.1, 1.0),
            progress=False,
        )
    batch = loader([loader.dataset()[i] for i in range(8)])
    assert batch["resource_nd"].shape == (8, 32)
    assert batch["allocation_na"].shape == (8, 5)
    stats = loader.get_resource_stats()
    assert stats["groups"]["pca_widths"] == {"energy": 14, "nutrient": 14}
    assert stats["pca"]["nutrient"]["components"] == stats["genes"]["nutrient_block"] < 14


def test_state_round_trip_reads_no_annotation_file() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        dm = ResourceDataModule(str(shared_data(PBMC)), regress_out=("pct_ribo",), **RAW)
        dm.setup("fit")
        restored = ResourceDataModule(
            str(shared_data(PBMC)), regress_out=("pct_ribo",), resource_gene_sets="/gone.gmt", **RAW
        )
        restored.load_state_dict(dm.state_dict())
        restored.setup("fit")
    batch = dm.store.read(np.arange(32))
    assert_same(restored.normalize(batch), dm.normalize(batch), "restored")


def test_a_user_gmt_with_set_names_and_mito_genes_from_a_var_column(tmp_path: Path) -> None:
    gmt = tmp_path / "energy.gmt"
    gmt.write_text("OXPHOS\tmy oxphos\tATP5F1A\tNDUFA4\tCOX7C\nNUTRIENT\t\tSLC2A3\tSLC7A5\n")
    adata = ad.read_h5ad(shared_data(PBMC))
    adata.var["is_mito"] = adata.var_names.isin(["MT-ND3", "CD74"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        dm = ResourceDataModule(
            adata,
            resource_gene_sets=str(gmt),
            energy_terms=("oxphos",),
            nutrient_terms=("NUTRIENT",),
            mito_key="is_mito",
            **RAW,
        )
        dm.setup("fit")
    genes = dm.get_resource_stats()["genes"]
    found = [g for g in ("ATP5F1A", "NDUFA4", "COX7C") if g in set(adata.var_names)]
    assert genes["energy_block"] == len(found) and genes["mitochondrial"] == 2
    with pytest.raises(
        ConfigError,
        match=r"energy\.gmt: energy_terms \['GO:0006119', 'GO:0006096', 'GO:0046034'\] name no",
    ):
        ResourceDataModule(adata, resource_gene_sets=str(gmt), **RAW).setup("fit")
    with pytest.raises(ConfigError, match=r"mito_key='louvain'.*not a var column"):
        ResourceDataModule(adata, mito_key="louvain", **RAW).setup("fit")
    adata.var["flag"] = 1
    with pytest.raises(ConfigError, match="mito_key='flag': var column must be boolean"):
        ResourceDataModule(adata, mito_key="flag", **RAW).setup("fit")


def test_bad_regressors_are_refused_clearly() -> None:
    adata = ad.read_h5ad(shared_data(PBMC))
    adata.obs["S_score_gaps"] = adata.obs["S_score"].where(adata.obs["S_score"] > -0.2)
    with pytest.raises(
        ConfigError, match=r"obs column 'S_score_gaps' has .* cells without a finite"
    ):
        ResourceDataModule(adata, regress_out=("S_score_gaps",), **RAW).setup("fit")
    with pytest.raises(DataFileError, match="obs column 'nope' is missing"):
        ResourceDataModule(adata, regress_out=("nope",), **RAW).setup("fit")
    with pytest.raises(ConfigError, match="names a covariate twice"):
        ResourceDataModule(adata, regress_out=("pct_mito", "pct_mito"), **RAW)
    with pytest.raises(ConfigError, match="resource_efficiency_range"):
        ResourceDataModule(adata, resource_efficiency_range=(1.0, 0.5), **RAW)
    adata.obs["depth_twice"] = 2 * np.log(np.asarray(adata.X.sum(1)).ravel()) + 1
    with pytest.raises(FittingError, match=r"\['log_total_counts', 'depth_twice'\].*singular"):
        ResourceDataModule(adata, regress_out=("log_total_counts", "depth_twice"), **RAW).setup(
            "fit"
        )


def test_the_default_gene_sets_are_the_shared_go_release() -> None:
    from enhanced_dm.datasets import bundled_path

    shared = {
        line.split("\t")[1]: line
        for line in shared_data(GO_BP).read_text().splitlines()
        if line.strip()
    }
    bundled = bundled_path("go_bp_resource_terms_human.gmt").read_text().splitlines()
    assert len(bundled) == 7
    for line in bundled:
        assert shared[line.split("\t")[1]] == line
