"""PathwayComponent: selection rules, exact coverage statistics, Ensembl ids, constants, state."""

from __future__ import annotations

import copy
import io
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from enhanced_dm.components.pathways import (
    GeneSetAUCell,
    GeneSetMean,
    GeneSetSelection,
    PathwayComponent,
)
from enhanced_dm.data.store import CellStore
from enhanced_dm.datasets import bundled_path
from enhanced_dm.errors import ConfigError, DataFileError
from enhanced_dm.transforms import functional_context as F
from tests.components.reference import PBMC, gmt_sets, membership
from tests.helpers import shared_data

HSMM = "singlecell/hsmm_myoblast_timecourse_fpkm.h5ad"


@pytest.fixture(scope="module")
def pbmc_store() -> CellStore:
    return CellStore(shared_data(PBMC))


def fake(first: int, last: int) -> list[str]:
    return [f"NOT_A_GENE_{index}" for index in range(first, last + 1)]


@pytest.fixture
def tricky_gmt(tmp_path: Path, pbmc_store: CellStore) -> Path:
    """Sets built to hit every selection rule; Windows line endings, a blank line, lower case."""
    genes = pbmc_store.var_names
    lines = [
        ["SET_A", "cov 0.8", *genes[0:20], *fake(1, 5)],
        ["SET_FULL", "", *(gene.lower() for gene in genes[20:30])],
        ["SET_EMPTY", "only unknown genes", *fake(6, 7), *fake(1, 1)],
        ["SET_SMALL", "3 genes", *genes[30:33]],
        ["SET_LARGE", "40 genes", *genes[40:80]],
        ["SET_TIE", "cov 1", *genes[100:110]],
        ["SET_TIE_LATER", "cov 1, later in the file", *genes[110:120]],
        ["SET_LOWCOV", "cov 0.5", *genes[120:130], *fake(8, 17)],
    ]
    text = "\r\n".join("\t".join(line) for line in lines[:3]) + "\r\n\r\n"
    text += "\r\n".join("\t".join(line) for line in lines[3:]) + "\r\n"
    path = tmp_path / "tricky.gmt"
    path.write_bytes(text.encode())
    return path


def tricky_component(path: Path, num_pathways: int) -> PathwayComponent:
    return PathwayComponent(
        path, num_pathways=num_pathways, min_pathway_size=4, max_pathway_size=30
    )


def test_selection_rules_and_exact_coverage_statistics(tricky_gmt, pbmc_store) -> None:
    component = tricky_component(tricky_gmt, num_pathways=2)
    component.setup(pbmc_store)
    # Best coverage first (1.0), ties by file order: SET_TIE beats SET_TIE_LATER; columns in file order.
    assert component.require_selection().names == ["SET_FULL", "SET_TIE"]
    stats = component.report()
    assert stats["pathways_read"] == 8
    assert stats["pathways_kept"] == 2
    assert stats["pathways_dropped"] == {
        "not_in_top_num_pathways": 3,
        "empty_after_matching": 1,
        "too_small": 1,
        "too_large": 1,
    }
    assert stats["pathways_dropped_examples"] == {
        "not_in_top_num_pathways": ["SET_A", "SET_TIE_LATER", "SET_LOWCOV"],
        "empty_after_matching": ["SET_EMPTY"],
        "too_small": ["SET_SMALL"],
        "too_large": ["SET_LARGE"],
    }
    assert stats["genes_per_pathway_before_matching"] == [10, 10]
    assert stats["genes_per_pathway_after_matching"] == [10, 10]
    assert stats["data_genes"] == 765
    assert stats["data_genes_covered_fraction"] == 20 / 765
    assert stats["unmatched_symbols_count"] == 17
    assert stats["unmatched_symbols_examples"] == fake(1, 10)

    table = component.require_selection().table().set_index("name")
    assert table.loc["SET_A", ["genes_before_matching", "genes_after_matching"]].tolist() == [
        25,
        20,
    ]
    assert table.loc["SET_A", "coverage"] == 0.8
    assert table.loc["SET_EMPTY", "genes_after_matching"] == 0
    assert table.loc["SET_LOWCOV", "coverage"] == 0.5
    assert table["status"].tolist() == [
        "not_in_top_num_pathways",
        "kept",
        "empty_after_matching",
        "too_small",
        "too_large",
        "kept",
        "not_in_top_num_pathways",
        "not_in_top_num_pathways",
    ]


def test_num_pathways_is_an_upper_bound(tricky_gmt, pbmc_store) -> None:
    component = tricky_component(tricky_gmt, num_pathways=100)
    component.setup(pbmc_store)
    assert component.require_selection().names == [
        "SET_A",
        "SET_FULL",
        "SET_TIE",
        "SET_TIE_LATER",
        "SET_LOWCOV",
    ]
    assert component.report()["data_genes_covered_fraction"] == 60 / 765


def test_no_pathway_left_is_an_error_naming_the_reasons(tricky_gmt, pbmc_store) -> None:
    component = PathwayComponent(tricky_gmt, min_pathway_size=200, max_pathway_size=300)
    with pytest.raises(ConfigError, match=r"no pathway passes the filters \(8 read.*too_small"):
        component.setup(pbmc_store)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"pathway_score": "gsva"}, r"pathway_score='gsva' .*expected one of \['mean_z'"),
        ({"num_pathways": 0}, "num_pathways=0 is invalid; expected >= 1"),
        ({"num_pathways": 2.5}, "num_pathways=2.5 has the wrong type; expected int"),
        ({"min_pathway_size": 0}, "min_pathway_size=0 is invalid; expected >= 1"),
        ({"min_pathway_size": 20, "max_pathway_size": 10}, "need min_pathway_size <= max"),
        ({"aucell_top_fraction": 0.0}, r"aucell_top_fraction=0.0 .*expected in \(0, 1\]"),
        ({"pathway_scores": "mean"}, r"unknown option\(s\) \['pathway_scores'\]"),
    ],
)
def test_invalid_options_are_refused(options, message) -> None:
    with pytest.raises(ConfigError, match=message):
        PathwayComponent("any.gmt", **options)


def test_unknown_bundled_name_lists_the_bundled_files(pbmc_store) -> None:
    with pytest.raises(DataFileError, match=r"available: .*go_bp_pbmc68k_subset\.gmt"):
        PathwayComponent("no_such_sets.gmt").setup(pbmc_store)


def test_ensembl_var_names_match_through_gene_symbol_key() -> None:
    store = CellStore(shared_data(HSMM))
    assert store.var_names[0].startswith("ENSG")
    with pytest.raises(ConfigError, match="no pathway passes the filters"):
        PathwayComponent("go_bp_pbmc68k_subset.gmt").setup(store)
    with pytest.raises(ConfigError, match=r"available: .*gene_short_name"):
        PathwayComponent("go_bp_pbmc68k_subset.gmt", gene_symbol_key="symbol").setup(store)

    component = PathwayComponent("go_bp_pbmc68k_subset.gmt", gene_symbol_key="gene_short_name")
    component.setup(store)
    selection = component.require_selection()
    symbols = store.var()["gene_short_name"].astype(str).tolist()
    expected, before = membership(gmt_sets(bundled_path("go_bp_pbmc68k_subset.gmt")), symbols)
    after = expected.sum(axis=1)
    assert (np.asarray(selection.size_after) == after).all()
    assert (np.asarray(selection.size_before) == before).all()
    kept = (after >= 15) & (after <= 500)
    assert selection.n_sets == kept.sum() > 0
    assert np.array_equal(selection.mask().numpy(), expected[kept])


def test_constants_equal_numpy(pbmc_store) -> None:
    component = PathwayComponent("go_bp_pbmc68k_subset.gmt", min_pathway_size=20)
    component.setup(pbmc_store)
    selection = component.require_selection()
    expected, _ = membership(
        gmt_sets(bundled_path("go_bp_pbmc68k_subset.gmt")), pbmc_store.var_names
    )
    expected = expected[expected.sum(axis=1) >= 20]
    assert np.array_equal(selection.mask().numpy(), expected)
    assert np.array_equal(selection.membership().to_dense().numpy(), expected.astype(np.float32))

    m = expected.astype(np.float64)
    intersection = m @ m.T
    union = m.sum(1)[:, None] + m.sum(1)[None, :] - intersection
    np.testing.assert_allclose(selection.jaccard().numpy(), intersection / union, rtol=1e-6)
    assert (np.diag(selection.jaccard().numpy()) == 1).all()

    index_pm = selection.gene_index().numpy()
    assert index_pm.shape == (len(expected), expected.sum(axis=1).max())
    for row, genes in enumerate(index_pm):
        assert genes[genes >= 0].tolist() == np.flatnonzero(expected[row]).tolist()
        assert (genes[len(genes[genes >= 0]) :] == -1).all()


def test_selection_state_round_trips_through_a_weights_only_load(pbmc_store) -> None:
    component = PathwayComponent("go_bp_pbmc68k_subset.gmt")
    component.setup(pbmc_store)
    buffer = io.BytesIO()
    torch.save(component.state_dict(), buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)
    restored = PathwayComponent("/moved/away.gmt")  # the file is not read again
    restored.load_state_dict(state)
    restored.setup(pbmc_store)
    assert restored.require_selection().fingerprint() == component.require_selection().fingerprint()
    assert restored.report() == component.report()
    assert restored.config() == {**component.config(), "pathway_annotation_file": "/moved/away.gmt"}


def test_restored_selection_wins_over_other_options_with_a_warning(pbmc_store) -> None:
    component = PathwayComponent("go_bp_pbmc68k_subset.gmt")
    component.setup(pbmc_store)
    other = PathwayComponent("go_bp_pbmc68k_subset.gmt", num_pathways=7)
    with pytest.warns(UserWarning, match="its 278 pathways are used"):
        other.load_state_dict(component.state_dict())
    other.setup(pbmc_store)
    assert other.require_selection().n_sets == 278


def test_state_of_another_selection_is_refused_after_setup(tricky_gmt, pbmc_store) -> None:
    component = PathwayComponent("go_bp_pbmc68k_subset.gmt")
    component.setup(pbmc_store)
    other = tricky_component(tricky_gmt, num_pathways=2)
    other.setup(pbmc_store)
    with pytest.raises(ConfigError, match="load the state before setup"):
        other.load_state_dict(component.state_dict())
    other.load_state_dict(other.state_dict())  # its own state is fine


def test_gene_set_mean_transform_holds_buffers_and_copies(tricky_gmt, pbmc_store) -> None:
    component = tricky_component(tricky_gmt, num_pathways=2)
    component.setup(pbmc_store)
    selection = component.require_selection()
    transform = GeneSetMean(selection)
    assert {name for name, _ in transform.named_buffers()} == {
        "set_index_e",
        "gene_index_e",
        "set_size_p",
    }
    x_ng = torch.rand(3, pbmc_store.n_genes)
    before = x_ng.clone()
    out = copy.deepcopy(transform)({"x_ng": x_ng})["pathway_scores_np"]
    assert torch.equal(x_ng, before)
    expected = torch.stack([x_ng[:, 20:30].mean(1), x_ng[:, 100:110].mean(1)], dim=1)
    torch.testing.assert_close(out, expected)
    assert out.dtype == torch.float32
    assert repr(transform) == ("GeneSetMean(n_sets=2, key='x_ng', output_key='pathway_scores_np')")


def test_selection_table_lists_every_set_of_the_file(pbmc_store) -> None:
    path = shared_data("genesets/go_bp_human.gmt")
    component = PathwayComponent(path, num_pathways=50)
    component.setup(pbmc_store)
    table = component.require_selection().table()
    sets = gmt_sets(path)
    expected, before = membership(sets, pbmc_store.var_names)
    reference = pd.DataFrame({"name": list(sets), "before": before, "after": expected.sum(axis=1)})
    reference["coverage"] = reference["after"] / reference["before"]
    eligible = reference[(reference["after"] >= 15) & (reference["after"] <= 500)]
    top = eligible.sort_values("coverage", ascending=False, kind="stable").head(50)
    assert component.require_selection().names == reference.loc[sorted(top.index), "name"].tolist()
    assert table["genes_before_matching"].tolist() == reference["before"].tolist()
    assert table["genes_after_matching"].tolist() == reference["after"].tolist()
    assert isinstance(
        GeneSetSelection.from_state(component.state_dict()["selection"]), GeneSetSelection
    )


def test_ranks_break_ties_by_gene_order_and_aucell_needs_two_ranks(tricky_gmt, pbmc_store) -> None:
    x_ng = torch.tensor([[0, 3, 3, 1], [5, 0, 0, 0]], dtype=torch.int32)
    assert F.descending_ranks(x_ng).tolist() == [[4, 1, 2, 3], [1, 2, 3, 4]]
    assert F.aucell_max_auc(torch.tensor([1, 2, 10]), 4).tolist() == [3.0, 5.0, 6.0]
    component = tricky_component(tricky_gmt, num_pathways=2)
    component.setup(pbmc_store)
    with pytest.raises(ConfigError, match="AUCell needs 2 <= n_up <= 765"):
        GeneSetAUCell(component.require_selection(), n_up=1)
