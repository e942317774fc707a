"""CompartmentComponent: largest-compartment selection, table vs GMT, fraction and CLR kernels."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from enhanced_dm.components.compartments import CompartmentComponent, GeneSetCLR, GeneSetFraction
from enhanced_dm.data.store import CellStore
from enhanced_dm.errors import ConfigError
from enhanced_dm.transforms import functional_context as F
from tests.components.reference import PBMC, gmt_sets, membership
from tests.helpers import shared_data


@pytest.fixture(scope="module")
def pbmc_store() -> CellStore:
    return CellStore(shared_data(PBMC))


@pytest.fixture
def small_table(tmp_path: Path, pbmc_store: CellStore) -> Path:
    """CSV without header: A has 3 data genes, B 2 (+1 unknown), C 3 (tie with A), D only unknown."""
    genes = pbmc_store.var_names
    rows = [
        (genes[0], "A"),
        (genes[1], "A"),
        (genes[2], "A"),
        (genes[0], "B"),
        ("UNKNOWN_GENE", "B"),
        (genes[3], "B"),
        (genes[4], "C"),
        (genes[5].lower(), "C"),
        (genes[6], "C"),
        ("UNKNOWN_GENE", "D"),
    ]
    path = tmp_path / "compartments.csv"
    path.write_text("".join(f"{gene},{compartment}\n" for gene, compartment in rows))
    return path


def test_largest_compartments_kept_ties_by_file_order(small_table, pbmc_store) -> None:
    component = CompartmentComponent(small_table, num_compartments=2)
    component.setup(pbmc_store)
    selection = component.require_selection()
    assert selection.names == ["A", "C"]
    stats = component.report()
    assert stats["compartments_read"] == 4
    assert stats["compartments_dropped"] == {
        "not_in_top_num_compartments": 1,
        "empty_after_matching": 1,
    }
    assert stats["compartments_dropped_examples"] == {
        "not_in_top_num_compartments": ["B"],
        "empty_after_matching": ["D"],
    }
    assert stats["genes_per_compartment_before_matching"] == [3, 3]
    assert stats["unmatched_symbols_count"] == 1
    assert stats["data_genes_covered_fraction"] == 6 / 765
    expected = np.zeros((2, 765), dtype=bool)
    expected[0, [0, 1, 2]] = expected[1, [4, 5, 6]] = True
    assert np.array_equal(selection.mask().numpy(), expected)


def test_compartments_table_non_iea_equals_the_gmt(pbmc_store) -> None:
    table = CompartmentComponent(
        shared_data("genesets/go_cc_compartments_human.tsv"),
        num_compartments=5,
        compartment_non_iea_only=True,
    )
    gmt = CompartmentComponent("go_cc_compartments_human.gmt", num_compartments=5)
    table.setup(pbmc_store)
    gmt.setup(pbmc_store)
    a, b = table.require_selection(), gmt.require_selection()
    assert sorted(a.names) == sorted(b.names)
    mask_a = dict(zip(a.names, a.mask().numpy(), strict=True))
    mask_b = dict(zip(b.names, b.mask().numpy(), strict=True))
    assert all(np.array_equal(mask_a[name], mask_b[name]) for name in a.names)

    sets = gmt_sets(shared_data("genesets/go_cc_compartments_human.gmt"))
    expected, _ = membership(sets, pbmc_store.var_names)
    size = expected.sum(axis=1)
    top = sorted(np.argsort(-size, kind="stable")[:5])
    assert b.names == [list(sets)[row] for row in top]


def test_fraction_and_clr_equal_numpy_with_a_zero_count_cell(small_table, pbmc_store) -> None:
    component = CompartmentComponent(small_table, num_compartments=3)
    component.setup(pbmc_store)
    selection = component.require_selection()
    batch = pbmc_store.read(np.arange(20))
    counts = batch["counts_ng"].to_dense()
    counts[4] = 0  # a cell without counts
    total_n = batch["total_counts_n"].clone()
    total_n[4] = 0
    batch = {"counts_ng": counts, "total_counts_n": total_n}

    x = counts.numpy().astype(np.float64)
    m = selection.mask().numpy().astype(np.float64)
    sums = x @ m.T
    row_total = x.sum(axis=1, keepdims=True)
    fraction = np.divide(sums, row_total, out=np.zeros_like(sums), where=row_total > 0)
    log = np.log(sums + 1.0)
    clr = log - log.mean(axis=1, keepdims=True)

    out = GeneSetFraction(selection)(batch)["compartment_fraction_nk"]
    np.testing.assert_allclose(out.numpy(), fraction, atol=1e-6)
    assert not out[4].any()
    by_total = GeneSetFraction(selection, "total_counts")(batch)["compartment_fraction_nk"]
    library = total_n.numpy()[:, None].astype(np.float64)
    expected_by_total = np.divide(sums, library, out=np.zeros_like(sums), where=library > 0)
    np.testing.assert_allclose(by_total.numpy(), expected_by_total, atol=1e-6)
    clr_out = GeneSetCLR(selection)(batch)["compartment_x_nk"]
    np.testing.assert_allclose(clr_out.numpy(), clr, atol=1e-5)
    assert not clr_out[4].any()
    assert torch.isfinite(out).all() and torch.isfinite(clr_out).all()


def test_kernels_keep_inputs_and_return_float32() -> None:
    amount = torch.tensor([[0, 0, 0], [1, 3, 0]], dtype=torch.int32)
    before = amount.clone()
    clr = F.centred_log_ratio(amount, 0.5)
    fraction = F.safe_fraction(amount, amount.sum(1))
    assert torch.equal(amount, before)
    assert clr.dtype == fraction.dtype == torch.float32
    assert not clr[0].any() and not fraction[0].any()
    expected = np.log([1.5, 3.5, 0.5]) - np.log([1.5, 3.5, 0.5]).mean()
    np.testing.assert_allclose(clr[1].numpy(), expected, rtol=1e-6)
    np.testing.assert_allclose(fraction[1].numpy(), [0.25, 0.75, 0.0])
    with pytest.raises(ValueError, match="pseudocount must be positive"):
        F.centred_log_ratio(amount, 0.0)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"num_compartments": 0}, "num_compartments=0 is invalid; expected >= 1"),
        ({"compartment_fraction_denominator": "cells"}, "denominator='cells' has the wrong type"),
        ({"compartment_pseudocount": 0.0}, "pseudocount=0.0 is invalid; expected > 0"),
    ],
)
def test_invalid_options_are_refused(options, message) -> None:
    with pytest.raises(ConfigError, match=message):
        CompartmentComponent("any.tsv", **options)


def test_no_shared_gene_is_an_error(tmp_path, pbmc_store) -> None:
    path = tmp_path / "none.tsv"
    path.write_text("gene\tcompartment\nNOT_A_GENE\tnucleus\n")
    with pytest.raises(ConfigError, match="no compartment shares a gene with the data"):
        CompartmentComponent(path).setup(pbmc_store)
