"""The seeded cell subsample: chosen by cell index only, bounded, exact when small, DKW when not."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from enhanced_dm.fitting.rank_stats import (
    QuantileStatsMetric,
    RobustStatsMetric,
    sorted_median,
    sorted_quantiles,
)
from enhanced_dm.fitting.subsample import CellSubsampleMetric, cell_priority, dkw_epsilon
from tests.transforms.gene_normalization_helpers import batches, log_normalized

MOUSE_10K = "singlecell/mouse_10k_subset_counts.h5ad"


def splitmix64_reference(values: np.ndarray) -> np.ndarray:
    """splitmix64 in numpy uint64 (wrapping), the published constants."""
    with np.errstate(over="ignore"):
        z = values.astype(np.uint64) + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def test_cell_priority_is_splitmix64_of_seed_and_index() -> None:
    index = np.array([0, 1, 2, 10**9, 2**40 + 3], dtype=np.int64)
    seed_mix = splitmix64_reference(np.array([7], dtype=np.uint64))[0]
    expected = (splitmix64_reference(index.astype(np.uint64) ^ seed_mix) >> np.uint64(2)).astype(
        np.int64
    )
    np.testing.assert_array_equal(cell_priority(torch.from_numpy(index), 7).numpy(), expected)
    assert not torch.equal(cell_priority(torch.arange(100), 0), cell_priority(torch.arange(100), 1))


def fit(
    metric: CellSubsampleMetric, x: np.ndarray, batch_size: int, order: np.ndarray | None = None
):  # type: ignore[no-untyped-def]
    for batch in batches({"x_ng": x}, batch_size, order):
        metric.update(batch)
        assert int(metric.subsample_mask().sum()) <= metric.max_cells
        assert metric.stored_rows() <= metric.max_cells + metric.max_cells // 4
    return metric.compute()


@pytest.fixture(scope="module")
def mouse() -> np.ndarray:
    return log_normalized(MOUSE_10K)


def test_subsample_ignores_batch_order_size_and_rank_split(mouse: np.ndarray) -> None:
    x = mouse[:, :200]
    reference = fit(RobustStatsMetric(200, max_cells=700, seed=3), x, 1000)
    shuffled = np.random.default_rng(0).permutation(len(x))
    again = fit(RobustStatsMetric(200, max_cells=700, seed=3), x, 37, shuffled)
    for name in reference:
        torch.testing.assert_close(again[name], reference[name], rtol=0, atol=0)
    # Two "ranks" holding interleaved blocks of cells, merged as DDP's cat gather would.
    ranks = [RobustStatsMetric(200, max_cells=700, seed=3) for _ in range(2)]
    for rank, metric in enumerate(ranks):
        rows = np.nonzero((np.arange(len(x)) // 256) % 2 == rank)[0]
        for batch in batches({"x_ng": x}, 128, rows):
            metric.update(batch)
    ranks[0].merge_state(ranks[1])
    merged = ranks[0].compute()
    for name in reference:
        torch.testing.assert_close(merged[name], reference[name], rtol=0, atol=0)
    assert float(reference["subsample_cells"]) == 700
    other_seed = fit(RobustStatsMetric(200, max_cells=700, seed=4), x, 1000)
    assert not torch.equal(other_seed["center_g"], reference["center_g"])


def test_rank_statistics_are_exact_up_to_max_cells(mouse: np.ndarray) -> None:
    x = mouse[:3000, :100]
    quantiles = fit(QuantileStatsMetric(100, n_quantiles=1000, max_cells=3000), x, 512)
    levels = np.linspace(0, 1, 1000)
    np.testing.assert_allclose(
        quantiles["quantiles_gq"].numpy().T, np.percentile(x, levels * 100, axis=0), rtol=1e-6
    )
    robust = fit(RobustStatsMetric(100, max_cells=3000), x, 512)
    np.testing.assert_allclose(robust["center_g"].numpy(), np.median(x.astype(np.float64), 0))


def test_sparse_and_dense_batches_give_identical_statistics(mouse: np.ndarray) -> None:
    """Rows are stored sparse either way: CSR batches (as the pipeline sends them) and dense ones
    give bit-identical statistics, per group too, above and below ``max_cells``."""
    x = mouse[:, :300].copy()
    x[0, 0] = -0.0  # kept as stored, like any value whose bits are not all zero
    codes = np.random.default_rng(0).integers(0, 3, len(x))
    for metric_class, max_cells in [(RobustStatsMetric, 900), (QuantileStatsMetric, 20_000)]:
        results = []
        for sparse in (False, True):
            metric = metric_class(300, max_cells=max_cells, seed=1, group_key="batch_n", n_groups=3)
            for batch in batches({"x_ng": x, "batch_n": codes}, 97):
                if sparse:
                    batch = {**batch, "x_ng": batch["x_ng"].to_sparse_csr()}
                metric.update(batch)
            results.append(metric.compute())
        for name in results[0]:
            torch.testing.assert_close(results[1][name], results[0][name], rtol=0, atol=0)


@pytest.mark.parametrize("seed", [0, pytest.param(1, marks=pytest.mark.slow)])
def test_dkw_bound_holds_for_a_subsample(mouse: np.ndarray, seed: int) -> None:
    r"""With m = 2,000 of 10,000 cells, every fitted r-quantile has a full-data rank in
    r ± (eps + 1/m), eps the DKW bound at alpha = 1e-3 / n_genes (union bound over genes)."""
    x = mouse
    n_cells, n_genes = x.shape
    m = 2000
    fitted = fit(QuantileStatsMetric(n_genes, n_quantiles=101, max_cells=m, seed=seed), x, 1000)
    assert float(fitted["subsample_cells"]) == m
    quantiles_gq = fitted["quantiles_gq"].numpy()
    levels = fitted["references_q"].numpy()
    sorted_x = np.sort(x, axis=0)
    below = np.stack(
        [np.searchsorted(sorted_x[:, g], quantiles_gq[g], "left") for g in range(n_genes)]
    )
    at_or_below = np.stack(
        [np.searchsorted(sorted_x[:, g], quantiles_gq[g], "right") for g in range(n_genes)]
    )
    bound = dkw_epsilon(m, alpha=1e-3 / n_genes) + 1.0 / m
    excess_low = below / n_cells - levels  # F(q-) must not exceed r by more than the bound
    excess_high = levels - at_or_below / n_cells  # nor F(q) fall short of r by more
    worst = max(excess_low.max(), excess_high.max())
    assert worst <= bound, (worst, bound)
    assert worst > 0  # it is a subsample: the bound is not vacuous here
    robust = fit(RobustStatsMetric(n_genes, max_cells=m, seed=seed), x, 1000)
    median_g = robust["center_g"].numpy()
    below_median = (x < median_g).mean(axis=0)
    at_or_below_median = (x <= median_g).mean(axis=0)
    assert (below_median - 0.5).max() <= bound
    assert (0.5 - at_or_below_median).max() <= bound


@pytest.mark.parametrize("n_rows", [1, 2, 7, 10])
def test_sorted_quantiles_and_median_match_numpy(n_rows: int) -> None:
    values = np.random.default_rng(n_rows).normal(size=(n_rows, 5)).astype(np.float32)
    sorted_nc = torch.from_numpy(np.sort(values, axis=0))
    levels = np.linspace(0, 1, 13)
    np.testing.assert_allclose(
        sorted_quantiles(sorted_nc, torch.from_numpy(levels)).numpy(),
        np.percentile(values.astype(np.float64), levels * 100, axis=0),
        rtol=1e-12,
    )
    np.testing.assert_allclose(
        sorted_median(sorted_nc).numpy(), np.median(values.astype(np.float64), axis=0), rtol=1e-12
    )


def test_subsample_needs_cell_index() -> None:
    metric = RobustStatsMetric(3)
    with pytest.raises(KeyError, match="cell_index_n"):
        metric.update({"x_ng": torch.zeros(2, 3)})
