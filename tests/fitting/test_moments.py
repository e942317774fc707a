"""The per-gene moments of CSR batches (compiled on the CPU) equal those of the same cells dense."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pytest
import scipy.sparse as sp
import torch

from enhanced_dm.fitting import GroupedMomentsMetric, moments
from tests.helpers import shared_data

STATES = ("count", "sum_g", "sumsq_g", "count_b", "sum_bg", "sumsq_bg")


@pytest.mark.parametrize("compiled_from", [0, None])
@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int32, np.float16])
def test_sparse_moments_equal_the_dense_sums(
    dtype: type, compiled_from: int | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Real counts (wu2020), log-normalized for the float types; three groups and missing labels.
    # Compiled sums from any size (0), or never (None: scatter-adds); float16 never compiled.
    monkeypatch.setattr(
        moments, "COMPILED_MIN_VALUES", 2**62 if compiled_from is None else compiled_from
    )
    counts = ad.read_h5ad(shared_data("singlecell/wu2020_tcells_counts.h5ad")).X[:240]
    matrix = sp.csr_matrix(counts, dtype=np.float64)
    if dtype != np.int32:
        matrix.data = np.log1p(matrix.data)
    matrix = matrix.astype(np.float32 if dtype == np.float16 else dtype)
    group_n = torch.from_numpy(np.arange(240) % 4 - 1)  # codes -1, 0, 1, 2
    dense = _torch_csr(matrix, dtype).to_dense()
    sparse_metric = GroupedMomentsMetric(matrix.shape[1], 3, group_key="batch_n")
    dense_metric = GroupedMomentsMetric(matrix.shape[1], 3, group_key="batch_n")
    for rows in np.array_split(np.arange(240), 3):
        sparse_metric.update({"x_ng": _torch_csr(matrix[rows], dtype), "batch_n": group_n[rows]})
        dense_metric.update({"x_ng": dense[rows], "batch_n": group_n[rows]})
    for name in STATES:
        torch.testing.assert_close(
            getattr(sparse_metric, name), getattr(dense_metric, name), rtol=1e-12, atol=1e-12
        )
    assert float(sparse_metric.sumsq_bg[2].sum()) > 0
    assert float(sparse_metric.count_b.sum()) == 180  # the 60 cells coded -1 count globally only


def _torch_csr(matrix: sp.csr_matrix, dtype: type) -> torch.Tensor:
    values = torch.from_numpy(matrix.data)
    return torch.sparse_csr_tensor(
        torch.from_numpy(matrix.indptr.astype(np.int32)),
        torch.from_numpy(matrix.indices.astype(np.int32)),
        values.to(torch.float16) if dtype == np.float16 else values,
        size=matrix.shape,
        check_invariants=True,
    )
