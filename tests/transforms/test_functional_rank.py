"""Kernels of functional_rank against scikit-learn on synthetic data with ties and outliers."""

from __future__ import annotations

import pickle
import warnings

import numpy as np
import pytest
import torch
from sklearn.preprocessing import QuantileTransformer

from enhanced_dm.errors import DataFileError
from enhanced_dm.transforms.functional_rank import (
    NORMAL_CLIP,
    pearson_residuals,
    quantile_map,
    require_counts,
)


def fitted_sklearn(
    x: np.ndarray, n_quantiles: int, output_distribution: str
) -> QuantileTransformer:
    transformer = QuantileTransformer(
        n_quantiles=n_quantiles, output_distribution=output_distribution
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return transformer.fit(x)


def tied_in_fit(fit_x: np.ndarray, new_x: np.ndarray) -> np.ndarray:
    """Entries of ``new_x`` equal to a value that occurs more than once in its fitted column."""
    tied = np.zeros(new_x.shape, dtype=bool)
    for gene in range(new_x.shape[1]):
        values, counts = np.unique(fit_x[:, gene], return_counts=True)
        tied[:, gene] = np.isin(new_x[:, gene], values[counts > 1])
    return tied


@pytest.mark.parametrize("output_distribution", ["normal", "uniform"])
@pytest.mark.parametrize("n_quantiles", [1000, 57, 1])
def test_quantile_map_is_sklearn_transform(output_distribution: str, n_quantiles: int) -> None:
    rng = np.random.default_rng(n_quantiles)
    fit_x = np.round(rng.gamma(0.3, 2.0, size=(800, 30)), 1).astype(np.float32)  # many ties
    if n_quantiles == 1:
        fit_x = fit_x[:1]
    # float64, as sklearn's bound rule is meant (see gene_normalization_helpers.sklearn_quantile)
    transformer = fitted_sklearn(fit_x.astype(np.float64), n_quantiles, output_distribution)
    new_x = np.concatenate([fit_x[:200], fit_x[:200] + rng.normal(0, 2, (200, 30))]).astype(
        np.float32
    )  # seen values, and values between, below and above the fitted ones
    quantiles_gq = torch.from_numpy(np.ascontiguousarray(transformer.quantiles_.T))
    references_q = torch.from_numpy(transformer.references_)
    if n_quantiles == 1:  # sklearn's single level; the kernel takes it padded to two
        quantiles_gq = quantiles_gq.repeat(1, 2)
        references_q = references_q.repeat(2)
    x_ng = torch.from_numpy(new_x)
    before = x_ng.clone()
    y = quantile_map(x_ng, quantiles_gq, references_q, output_distribution)  # type: ignore[arg-type]
    torch.testing.assert_close(x_ng, before)  # input not mutated
    assert y.dtype == torch.float32 and y.shape == x_ng.shape
    expected = transformer.transform(new_x.astype(np.float64))
    # sklearn's lerped quantiles put a hair of float noise on tied values, which sends a tie to
    # one end of its levels; we give the middle (as sklearn intends). Compare the others.
    tied = tied_in_fit(fit_x, new_x)
    np.testing.assert_allclose(y.numpy()[~tied], expected[~tied], atol=5e-4, rtol=0)
    assert np.abs(y.numpy() - expected).max() <= (0.01 if output_distribution == "uniform" else 0.5)
    assert float(y.abs().max()) <= (NORMAL_CLIP if output_distribution == "normal" else 1.0)


def test_padded_quantiles_give_the_same_map() -> None:
    rng = np.random.default_rng(1)
    quantiles_gq = torch.from_numpy(np.sort(rng.normal(size=(5, 40)), axis=1).astype(np.float32))
    references_q = torch.linspace(0, 1, 40, dtype=torch.float64)
    padded_gq = torch.cat([quantiles_gq, quantiles_gq[:, -1:].expand(5, 10)], dim=1)
    padded_q = torch.cat([references_q, torch.ones(10, dtype=torch.float64)])
    x_ng = torch.from_numpy(rng.normal(scale=1.5, size=(300, 5)).astype(np.float32))
    x_ng[:5] = quantiles_gq[:, -1]  # exactly the top quantile
    torch.testing.assert_close(
        quantile_map(x_ng, padded_gq, padded_q), quantile_map(x_ng, quantiles_gq, references_q)
    )


def test_require_counts_names_the_offending_value() -> None:
    require_counts(torch.tensor([[0, 3], [1, 0]], dtype=torch.int32), "T")
    require_counts(torch.tensor([[0.0, 3.0], [1.0, 0.0]]), "T")
    with pytest.raises(DataFileError, match=r"found 2\.5 \(row 1 of the batch, gene column 0\)"):
        require_counts(torch.tensor([[0.0, 3.0], [2.5, 0.0]]), "T")
    with pytest.raises(DataFileError, match=r"found -1\.0"):
        require_counts(torch.tensor([[0.0, -1.0]]), "T")
    with pytest.raises(DataFileError, match="found negatives"):
        require_counts(torch.tensor([[0, -1]]), "T")


def test_pearson_kernel_never_gives_nan_and_keeps_its_input() -> None:
    counts_ng = torch.tensor([[0, 5, 0], [0, 0, 0], [2, 1, 0]], dtype=torch.int32)
    fraction_g = torch.tensor([0.4, 0.6, 0.0])
    before = counts_ng.clone()
    z = pearson_residuals(counts_ng, fraction_g, 100.0, torch.tensor([3.0, 3.0, 1.0]))
    assert torch.equal(counts_ng, before)
    assert torch.isfinite(z).all()
    assert z[1].abs().sum() == 0  # a cell without counts
    assert z[:, 2].abs().sum() == 0  # a gene without counts anywhere
    assert float(z[2].abs().max()) <= 1.0  # per-cell clip
    pickle.loads(pickle.dumps(pearson_residuals))
