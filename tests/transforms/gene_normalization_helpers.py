"""Shared set-up of the robust / quantile / Pearson tests: real matrices and a chunked fit."""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Mapping
from functools import cache

import anndata as ad
import numpy as np
import scanpy as sc
import scipy.sparse as sp
import torch
from scanpy.experimental.pp import normalize_pearson_residuals
from sklearn.preprocessing import QuantileTransformer

from enhanced_dm.transforms.base import FittableTransform
from tests.helpers import shared_data

WU2020 = "singlecell/wu2020_tcells_counts.h5ad"


@cache
def _read(relative: str) -> ad.AnnData:
    return sc.read_h5ad(shared_data(relative))


def dense(matrix: np.ndarray | sp.spmatrix) -> np.ndarray:
    return matrix.toarray() if sp.issparse(matrix) else np.asarray(matrix)


@cache
def counts(relative: str = WU2020) -> np.ndarray:
    """The file's raw counts as a dense array (its own dtype)."""
    return dense(_read(relative).X)


@cache
def log_normalized(relative: str = WU2020) -> np.ndarray:
    """scanpy ``normalize_total(target_sum=1e4)`` then ``log1p``, as float32."""
    adata = _read(relative).copy()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "Some cells have zero counts": they stay 0
        sc.pp.normalize_total(adata, target_sum=1e4)
    sc.pp.log1p(adata)
    return dense(adata.X).astype(np.float32)


def most_detected_genes(matrix: np.ndarray, n_genes: int) -> np.ndarray:
    """Columns of the ``n_genes`` genes detected in most cells (keeps per-group tests fast)."""
    return np.sort(np.argsort(-(matrix > 0).sum(axis=0), kind="stable")[:n_genes])


def obs_codes(relative: str, column: str) -> np.ndarray:
    """Integer codes of an obs column (int64), as the DataModule puts them in ``<column>_n``."""
    return _read(relative).obs[column].astype("category").cat.codes.to_numpy().astype(np.int64)


def batches(
    arrays: Mapping[str, np.ndarray], batch_size: int = 100, order: np.ndarray | None = None
) -> Iterator[dict[str, torch.Tensor]]:
    """Batches of the given per-cell arrays with ``cell_index_n``, in ``order`` (default: storage)."""
    n_cells = len(next(iter(arrays.values())))
    order = np.arange(n_cells) if order is None else order
    for start in range(0, n_cells, batch_size):
        rows = order[start : start + batch_size]
        batch = {
            name: torch.from_numpy(np.ascontiguousarray(a[rows])) for name, a in arrays.items()
        }
        batch["cell_index_n"] = torch.from_numpy(rows.astype(np.int64))
        yield batch


def fit_and_apply(
    transform: FittableTransform, arrays: Mapping[str, np.ndarray], batch_size: int = 100
) -> np.ndarray:
    """Fit through ``fit_metric().update`` over chunks, ``load_fitted``, then ``forward`` every cell."""
    metric = transform.fit_metric()
    for batch in batches(arrays, batch_size):
        metric.update(batch)
    transform.load_fitted(metric.compute())
    with torch.no_grad():
        outputs = [transform(batch)[transform.output_key] for batch in batches(arrays, batch_size)]
    return torch.cat(outputs).numpy()


def per_group(reference, matrix: np.ndarray, codes: np.ndarray) -> np.ndarray:  # type: ignore[no-untyped-def]
    """``reference`` applied to each group's rows separately."""
    result = np.zeros(matrix.shape, dtype=np.float64)
    for code in np.unique(codes):
        rows = codes == code
        result[rows] = reference(matrix[rows])
    return result


# ----------------------------------------------------------------- references (oracles)
def center_and_scale(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """median and 1.4826 MAD (MAD 0 -> 1.2533 mean AD, 0 -> 1) per column, in float64."""
    x = x.astype(np.float64)
    median = np.median(x, axis=0)
    deviation = np.abs(x - median)
    mad, mean_ad = np.median(deviation, axis=0), deviation.mean(axis=0)
    return median, np.where(mad > 0, 1.4826 * mad, np.where(mean_ad > 0, 1.2533 * mean_ad, 1.0))


def robust_reference(x: np.ndarray) -> np.ndarray:
    median, scale = center_and_scale(x)
    return (x.astype(np.float64) - median) / scale


def assert_robust_close(actual: np.ndarray, x: np.ndarray, codes: np.ndarray | None = None) -> None:
    """Within 1e-5 (max abs) of the float64 reference, except where float32 cannot resolve it.

    The input and the fitted median are float32 (and the DataModule's total-count step rounds
    differently from scanpy's by an ulp or two); each rounding (``eps * |x|``) is divided by the
    scale, which is ~0.005 for rare genes, so there the float64 reference can be further than
    1e-5 away. Those entries get eight float32 roundings of ``(|x| + |median|) / scale``; entries
    with a scale above 0.05 must be within 1e-5.
    """
    codes = np.zeros(len(x), dtype=np.int64) if codes is None else codes
    expected = per_group(robust_reference, x, codes)
    center = per_group(lambda m: np.broadcast_to(center_and_scale(m)[0], m.shape), x, codes)
    scale = per_group(lambda m: np.broadcast_to(center_and_scale(m)[1], m.shape), x, codes)
    eps = float(np.finfo(np.float32).eps)
    tolerance = 1e-5 + 8 * eps * (np.abs(x) + np.abs(center)) / scale
    error = np.abs(actual - expected)
    assert np.all(error <= tolerance), float((error - tolerance).max())
    assert error[scale > 0.05].max() <= 1e-5


def sklearn_quantile(x: np.ndarray, output_distribution: str = "normal") -> np.ndarray:
    """sklearn on float64 values: sklearn evaluates its bound rule (``x + 1e-7 > max``) in the
    input's dtype, and in float32 ``x + 1e-7`` rounds back to ``x`` above 1, so on float32 input
    values tied at a gene's maximum miss the upper bound. float64 (what scanpy's matrices are)
    applies the rule as meant; enhanced-dm compares its bounds in float64 too."""
    transformer = QuantileTransformer(n_quantiles=1000, output_distribution=output_distribution)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # n_quantiles > n_samples: sklearn lowers it
        return transformer.fit_transform(x.astype(np.float64))


def untied(x: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """Entries whose value occurs once in its gene (within its group).

    sklearn breaks ties by float noise (a quantile lerped with weight 1e-16 lands a hair above
    the tied value), so tied entries may sit at either end of their tie; we give the middle.
    """
    mask = np.zeros(x.shape, dtype=bool)
    for code in np.unique(codes):
        rows = np.nonzero(codes == code)[0]
        block = x[rows]
        order = np.argsort(block, axis=0, kind="stable")
        sorted_block = np.take_along_axis(block, order, axis=0)
        same_prev = np.vstack(
            [np.zeros((1, x.shape[1]), bool), sorted_block[1:] == sorted_block[:-1]]
        )
        same_next = np.vstack(
            [sorted_block[1:] == sorted_block[:-1], np.zeros((1, x.shape[1]), bool)]
        )
        unique_sorted = ~(same_prev | same_next)
        unique_block = np.zeros_like(unique_sorted)
        np.put_along_axis(unique_block, order, unique_sorted, axis=0)
        mask[rows] = unique_block
    return mask


def scanpy_pearson(x: np.ndarray, theta: float = 100.0, clip: float | None = None) -> np.ndarray:
    adata = ad.AnnData(x.astype(np.float64))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # 0/0 for genes without counts
        normalize_pearson_residuals(adata, theta=theta, clip=clip)
    return np.asarray(adata.X)


def assert_pearson_close(actual: np.ndarray, expected: np.ndarray) -> None:
    """Within 1e-4 where scanpy is finite; 0 where scanpy divides 0 by 0 (gene without counts)."""
    finite = np.isfinite(expected)
    assert np.abs(actual[finite] - expected[finite]).max() <= 1e-4
    assert np.all(actual[~finite] == 0)
