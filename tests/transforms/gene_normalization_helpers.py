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
