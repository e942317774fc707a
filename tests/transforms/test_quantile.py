"""QuantileNormalize against scikit-learn's QuantileTransformer on real data."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.stats import rankdata

from enhanced_dm.errors import ConfigError, FittingError
from enhanced_dm.transforms.quantile import QuantileNormalize
from tests.transforms.gene_normalization_helpers import (
    WU2020,
    fit_and_apply,
    log_normalized,
    most_detected_genes,
    obs_codes,
    per_group,
    sklearn_quantile,
    untied,
)


@pytest.fixture(scope="module")
def x_subset() -> np.ndarray:
    x = log_normalized()
    return x[:, most_detected_genes(x, 1000)]


@pytest.mark.parametrize("output_distribution", ["normal", "uniform"])
def test_quantile_matches_sklearn_quantile_transformer(
    x_subset: np.ndarray, output_distribution: str
) -> None:
    x = x_subset
    transform = QuantileNormalize(x.shape[1], output_distribution=output_distribution)
    y = fit_and_apply(transform, {"x_ng": x})
    expected = sklearn_quantile(x, output_distribution)
    mask = untied(x, np.zeros(len(x), dtype=np.int64))
    assert mask.sum() > 100_000
    assert np.abs(y - expected)[mask].max() <= 1e-3
    assert np.abs(y - expected).max() <= 0.1  # ties: the middle of the tie instead of an end


def test_quantile_is_monotone_per_gene(x_subset: np.ndarray) -> None:
    x = x_subset
    y = fit_and_apply(QuantileNormalize(x.shape[1]), {"x_ng": x})
    distinct = np.array([len(np.unique(column)) for column in x.T])
    genes = np.nonzero(distinct > 10)[0]
    assert len(genes) > 500
    rank_x, rank_y = rankdata(x[:, genes], axis=0), rankdata(y[:, genes], axis=0)
    rank_x -= rank_x.mean(axis=0)
    rank_y -= rank_y.mean(axis=0)
    spearman = (rank_x * rank_y).sum(0) / np.sqrt((rank_x**2).sum(0) * (rank_y**2).sum(0))
    np.testing.assert_allclose(spearman, 1.0, rtol=0, atol=1e-12)


def test_quantile_per_batch_matches_sklearn_batch_by_batch(x_subset: np.ndarray) -> None:
    x, codes = x_subset[:, :100], obs_codes(WU2020, "batch")  # sklearn loops over genes x groups
    transform = QuantileNormalize(x.shape[1], int(codes.max()) + 1, "batch_n")
    y = fit_and_apply(transform, {"x_ng": x, "batch_n": codes})
    expected = per_group(sklearn_quantile, x, codes)
    assert np.abs(y - expected)[untied(x, codes)].max() <= 1e-3


def test_quantile_unfitted_group_uses_global_quantiles(x_subset: np.ndarray) -> None:
    x = x_subset[:, :50]
    codes = np.where(np.arange(len(x)) % 2 == 0, 0, 1)
    transform = QuantileNormalize(x.shape[1], 3, "batch_n")
    fit_and_apply(transform, {"x_ng": x, "batch_n": codes})
    assert transform.fitted_b.tolist() == [True, True, False]
    batch = {"x_ng": torch.from_numpy(x[:5]), "batch_n": torch.tensor([2, -1, 2, 2, -1])}
    global_only = QuantileNormalize(x.shape[1])
    fit_and_apply(global_only, {"x_ng": x})
    torch.testing.assert_close(transform(batch)["x_ng"], global_only(batch)["x_ng"])


def test_quantile_state_round_trip_and_options(x_subset: np.ndarray) -> None:
    x = x_subset[:, :100]
    transform = QuantileNormalize(x.shape[1], n_quantiles=50)
    fit_and_apply(transform, {"x_ng": x})
    assert transform.quantiles_gq.shape == (100, 50)
    restored = QuantileNormalize(x.shape[1], n_quantiles=50)
    restored.restore_fitted(transform.fitted_state())
    batch = {"x_ng": torch.from_numpy(x)}
    torch.testing.assert_close(restored(batch)["x_ng"], transform(batch)["x_ng"])
    assert transform.config()["n_quantiles"] == 50
    assert repr(transform) == (
        "QuantileNormalize(n_genes=100, n_quantiles=50, output_distribution='normal')"
    )
    with pytest.raises(ValueError, match="saved quantiles do not fit"):
        QuantileNormalize(99).restore_fitted(transform.fitted_state())
    with pytest.raises(ConfigError, match="output_distribution"):
        QuantileNormalize(3, output_distribution="laplace")
    with pytest.raises(FittingError, match="before its quantiles were fitted"):
        QuantileNormalize(3)({"x_ng": torch.zeros(2, 3)})


def test_quantile_takes_sparse_rows_as_the_pipeline_sends_them(x_subset: np.ndarray) -> None:
    """``accepts_sparse``: a CSR ``x_ng`` is fitted from its stored values and densified when
    mapped, with the same result as the dense matrix."""
    x = x_subset[:500, :50]
    codes = np.arange(len(x)) % 2
    dense_transform = QuantileNormalize(x.shape[1], 2, "batch_n", n_quantiles=100)
    expected = fit_and_apply(dense_transform, {"x_ng": x, "batch_n": codes})
    transform = QuantileNormalize(x.shape[1], 2, "batch_n", n_quantiles=100)
    assert transform.accepts_sparse
    metric = transform.fit_metric()
    sparse_x = torch.from_numpy(x).to_sparse_csr()
    batch = {
        "x_ng": sparse_x,
        "batch_n": torch.from_numpy(codes),
        "cell_index_n": torch.arange(len(x)),
    }
    metric.update(batch)
    transform.load_fitted(metric.compute())
    np.testing.assert_array_equal(transform(batch)["x_ng"].numpy(), expected)


@pytest.mark.parametrize("output_distribution", ["normal", "uniform"])
def test_values_tied_at_a_genes_maximum_map_to_the_upper_bound_as_sklearn(
    x_subset: np.ndarray, output_distribution: str
) -> None:
    """sklearn's bound rule at BOTH ends, on 343 cells (fewer than n_quantiles=1000, so sklearn
    fits min(1000, 343) quantiles): every value equal to a gene's fitted maximum maps to the
    upper bound (+5.1993 for "normal", 1 for "uniform"), however many cells share it."""
    x = x_subset
    assert x.shape[0] < 1000
    tied_max = (x == x.max(axis=0)).sum(axis=0) > 1
    tied_max &= x.max(axis=0) > 1.0  # where float32 x + 1e-7 == x
    assert tied_max.sum() >= 2, "the real data should hold genes with a tied maximum"
    y = fit_and_apply(
        QuantileNormalize(x.shape[1], output_distribution=output_distribution), {"x_ng": x}
    )
    expected = sklearn_quantile(x, output_distribution)
    at_ends = (x == x.max(axis=0)) | (x == x.min(axis=0))
    np.testing.assert_allclose(y[at_ends], expected[at_ends], rtol=0, atol=1e-5)
    top = 5.1993 if output_distribution == "normal" else 1.0
    np.testing.assert_allclose(
        y[:, tied_max][x[:, tied_max] == x.max(axis=0)[tied_max]], top, atol=1e-4
    )
