"""RegulatoryDataModule / RegulatoryComponent against decoupler on real data (wu2020 T cells,
PROGENy and the TF-restricted Pathway Commons network)."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scanpy as sc
import torch

from enhanced_dm import (
    AnnotationFileError,
    BaseEnhancedDataModule,
    ConfigError,
    RegulatoryDataLoader,
    RegulatoryDataModule,
)
from enhanced_dm.annotations import load_network, read_gene_list
from enhanced_dm.components import RegulatoryComponent
from tests.components.reference import all_outputs
from tests.contract import assert_same, check_component
from tests.helpers import shared_data

decoupler = pytest.importorskip("decoupler")

WU2020 = "singlecell/wu2020_tcells_counts.h5ad"
PBMC = "singlecell/pbmc68k_reduced_counts.h5ad"
PROGENY = "networks/progeny_human_top500.tsv"
PATHWAY_COMMONS = "networks/pathwaycommons_controls_expression_of.tsv.gz"
TF_LIST = "networks/tf_list_human_go0003700.txt"
OPTIONS: dict[str, Any] = dict(batch_size=128, val_fraction=0.0, progress=False, seed=0)


def log_normalized(relative: str) -> ad.AnnData:
    """scanpy normalize_total(1e4) -> log1p in float64: the matrix decoupler users pass."""
    adata = ad.read_h5ad(shared_data(relative))
    adata.X = adata.X.astype(np.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        sc.pp.normalize_total(adata, target_sum=1e4)
    sc.pp.log1p(adata)
    return adata


def decoupler_scores(adata: ad.AnnData, net: pd.DataFrame, method: str) -> pd.DataFrame:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if method == "ulm":
            decoupler.mt.ulm(adata, net, tmin=5)
            return adata.obsm["score_ulm"]
        decoupler.mt.waggr(adata, net, tmin=5, fun="wmean", times=0)
        return adata.obsm["score_waggr"]


@pytest.fixture(scope="module")
def progeny() -> pd.DataFrame:
    return load_network(shared_data(PROGENY))


@pytest.fixture(scope="module")
def tf_pathway_commons() -> pd.DataFrame:
    net = load_network(shared_data(PATHWAY_COMMONS))
    tfs = set(read_gene_list(shared_data(TF_LIST)))
    return net[net["source"].isin(tfs)].reset_index(drop=True)


def activities(
    network: Any, method: str, **options: Any
) -> tuple[RegulatoryDataModule, np.ndarray]:
    dm = RegulatoryDataModule(
        str(shared_data(WU2020)),
        interaction_matrix_file=network,
        regulatory_strength_threshold=0.0,
        tf_activity_method=method,
        **{**OPTIONS, **options},
    )
    return dm, all_outputs(dm, ["tf_activity_nr"])["tf_activity_nr"]


@pytest.mark.parametrize("method", ["ulm", "wmean"])
@pytest.mark.parametrize("network", ["progeny", "tf_pathway_commons"])
def test_tf_activity_equals_decoupler(method: str, network: str, request) -> None:
    net = request.getfixturevalue(network)
    dm, ours = activities(net, method)
    adata = log_normalized(WU2020)
    expected = decoupler_scores(adata, net, method)
    assert expected.shape[0] == ours.shape[0]  # decoupler keeps every cell: none is empty
    # Documented difference: min_targets counts targets among the data's genes (the columns are
    # known before fitting); decoupler's tmin counts them among the genes detected in its matrix.
    # Regulators are the same but for those between the two counts.
    columns = [dm.regulator_names.index(name) for name in expected.columns]
    extra = sorted(set(dm.regulator_names) - set(expected.columns))
    detected = set(adata.var_names[np.asarray((adata.X != 0).sum(0)).ravel() > 0])
    for name in extra:
        assert net[(net["source"] == name) & net["target"].isin(detected)].shape[0] < 5
    assert len(columns) == (14 if network == "progeny" else len(expected.columns)) > 10
    np.testing.assert_allclose(ours[:, columns], expected.to_numpy(), rtol=0, atol=1e-4)


def test_the_three_network_forms_give_identical_batches(
    progeny: pd.DataFrame, tmp_path: Path
) -> None:
    torch.save(
        {
            "sources": list(progeny["source"]),
            "targets": list(progeny["target"]),
            "weight": torch.tensor(progeny["weight"].to_numpy()),
        },
        tmp_path / "edges.pt",
    )
    regulators = sorted(set(progeny["source"]))
    genes = sorted(set(progeny["target"]))
    dense = np.zeros((len(regulators), len(genes)))
    dense[
        progeny["source"].map({r: i for i, r in enumerate(regulators)}),
        progeny["target"].map({g: i for i, g in enumerate(genes)}),
    ] = progeny["weight"]
    torch.save(
        {"adjacency": torch.tensor(dense), "regulators": regulators, "genes": genes},
        tmp_path / "dense.pt",
    )
    forms = [
        str(shared_data(PROGENY)),
        progeny,
        str(tmp_path / "edges.pt"),
        str(tmp_path / "dense.pt"),
    ]
    results = []
    for form in forms:
        dm = RegulatoryDataModule(str(shared_data(PBMC)), interaction_matrix_file=form, **OPTIONS)
        dm.setup("fit")
        batch = dm.store.read(np.arange(64))
        results.append((dm.regulator_names, dm.normalize(batch)["tf_activity_nr"]))
    for names, activity in results[1:]:
        assert names == results[0][0]
        assert_same(activity, results[0][1], "tf_activity_nr")


def test_threshold_min_targets_duplicates_and_malformed_rows(tmp_path: Path) -> None:
    dm = RegulatoryDataModule(str(shared_data(PBMC)), regulatory_strength_threshold=3.0, **OPTIONS)
    dm.setup("fit")
    stats = dm.get_regulatory_stats()
    progeny = load_network(shared_data(PROGENY))
    assert stats["edges_dropped_below_threshold"] == int((progeny["weight"].abs() < 3.0).sum())
    assert stats["targets_per_regulator"]["min"] >= 5
    strict = RegulatoryDataModule(str(shared_data(PBMC)), min_targets=30, **OPTIONS)
    strict.setup("fit")
    assert len(strict.regulator_names) < 14
    assert strict.get_regulatory_stats()["regulators_dropped"]["fewer_than_min_targets"] >= 1
    repeated = tmp_path / "repeated.tsv"
    repeated.write_text("source\ttarget\tweight\nTF1\tCD4\t1\nTF1\tCD4\t2\n")
    with pytest.raises(
        AnnotationFileError,
        match=r"repeated\.tsv:3: duplicate edge .TF1. -> .CD4. \(first on line 2\)",
    ):
        load_network(repeated)
    malformed = tmp_path / "malformed.tsv"
    malformed.write_text("source\ttarget\tweight\nTF1\tCD4\tstrong\n")
    with pytest.raises(AnnotationFileError, match=r"malformed\.tsv:2: weight 'strong'"):
        load_network(malformed)
    mor = tmp_path / "dorothea.tsv"
    mor.write_text("source\ttarget\tmor\tconfidence\nTF1\tCD4\t-1\tA\n")
    assert load_network(mor)["weight"].tolist() == [-1.0]
    with pytest.raises(ConfigError, match="no regulator keeps min_targets=5"):
        RegulatoryDataModule(
            str(shared_data(PBMC)), interaction_matrix_file=str(mor), **OPTIONS
        ).setup("fit")


def test_type_specific_normalization_equals_each_on_its_columns(tf_pathway_commons) -> None:
    net = tf_pathway_commons
    types = RegulatoryDataModule(
        str(shared_data(PBMC)),
        interaction_matrix_file=net,
        regulatory_strength_threshold=0.0,
        tf_normalization="robust",
        target_normalization="quantile",
        **OPTIONS,
    )
    types.setup("fit")
    code_g = types.gene_type_g.to(torch.int64)
    tf_columns = torch.nonzero(code_g >= 2).flatten()
    target_columns = torch.nonzero(code_g == 1).flatten()
    other_columns = torch.nonzero(code_g == 0).flatten()
    assert len(tf_columns) and len(target_columns) and len(other_columns)
    out = all_outputs(types, ["x_ng"])["x_ng"]
    for kind, columns in (
        ("robust", tf_columns),
        ("quantile", target_columns),
        ("z_score", other_columns),
    ):
        # gene-wise statistics are per gene, so a whole-matrix fit cut to the columns is the
        # normalization fitted on those columns alone
        reference = BaseEnhancedDataModule(
            str(shared_data(PBMC)), normalization_type=kind, **OPTIONS
        )
        expected = all_outputs(reference, ["x_ng"])["x_ng"][:, columns.numpy()]
        np.testing.assert_allclose(out[:, columns.numpy()], expected, rtol=1e-5, atol=1e-5)


def test_check_component_and_the_collate_twin(progeny: pd.DataFrame) -> None:
    def make_dm(components):
        return BaseEnhancedDataModule(
            str(shared_data(PBMC)), components=components, **{**OPTIONS, "val_fraction": 0.2}
        )

    check_component(
        lambda: RegulatoryComponent(progeny, regulatory_strength_threshold=0.0), make_dm
    )
    check_component(
        lambda: RegulatoryComponent(
            progeny, tf_normalization="robust", target_normalization="quantile"
        ),
        make_dm,
    )
    loader = RegulatoryDataLoader(
        None,
        data=str(shared_data(PBMC)),
        interaction_matrix_file=str(shared_data(PROGENY)),
        regulatory_strength_threshold=0.5,
        progress=False,
    )
    batch = loader([loader.dataset()[i] for i in range(8)])
    assert batch["tf_activity_nr"].shape == (8, len(loader.datamodule.regulator_names))
    assert loader.get_regulatory_stats()["regulators_kept"] >= 10


def test_constants_and_state_round_trip(progeny: pd.DataFrame) -> None:
    dm = RegulatoryDataModule(str(shared_data(PBMC)), **OPTIONS)
    dm.setup("fit")
    adjacency = dm.adjacency_rg.to_dense()
    assert adjacency.shape == (len(dm.regulator_names), dm.n_genes)
    assert torch.equal(dm.interaction_mask_rg, adjacency != 0)
    assert dm.regulator_gene_index_r.tolist() == [-1] * 14  # PROGENy's sources are pathways
    assert set(dm.gene_type_g.unique().tolist()) == {0, 1}
    restored = RegulatoryDataModule(
        str(shared_data(PBMC)), interaction_matrix_file="/gone.tsv", **OPTIONS
    )
    restored.load_state_dict(dm.state_dict())
    restored.setup("fit")  # the network comes from the state: the file is not read
    batch = dm.store.read(np.arange(32))
    assert_same(restored.normalize(batch), dm.normalize(batch), "restored")


def test_gene_type_files_set_the_gene_types(tmp_path: Path, tf_pathway_commons) -> None:
    from enhanced_dm.annotations import read_gene_types

    tf_list = read_gene_types(shared_data(TF_LIST))
    assert set(tf_list.values()) == {"tf"} and len(tf_list) > 1000
    table = tmp_path / "types.tsv"
    table.write_text("gene\ttype\nCD4\ttarget\nCD4\tTF\nIRF1\tTF\nIL7R\ttarget\n")
    assert read_gene_types(table) == {"CD4": "both", "IRF1": "tf", "IL7R": "target"}
    bad = tmp_path / "bad.tsv"
    bad.write_text("gene\ttype\nCD4\tenhancer\n")
    with pytest.raises(AnnotationFileError, match=r"bad\.tsv:2: gene type 'enhancer'"):
        read_gene_types(bad)
    loader = RegulatoryDataLoader(
        {"data": str(shared_data(PBMC))},
        interaction_matrix_file=tf_pathway_commons,
        gene_type_annotation_file=str(table),
        regulatory_strength_threshold=0.5,
        progress=False,
    )
    dm = loader.datamodule
    codes = dict(zip(dm.var_names, dm.gene_type_g.tolist(), strict=True))
    assert (codes["CD4"], codes["IRF1"], codes["IL7R"]) == (3, 2, 1)
    assert sum(code > 0 for code in codes.values()) == 3  # the file, not the network, decides
