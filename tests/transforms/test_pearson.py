"""PearsonResiduals against scanpy.experimental.pp.normalize_pearson_residuals on real counts."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from enhanced_dm.errors import ConfigError, DataFileError
from enhanced_dm.transforms.pearson import PearsonResiduals
from tests.transforms.gene_normalization_helpers import (
    WU2020,
    assert_pearson_close,
    counts,
    fit_and_apply,
    most_detected_genes,
    obs_codes,
    per_group,
    scanpy_pearson,
)


def test_pearson_matches_scanpy() -> None:
    x = counts()
    y = fit_and_apply(PearsonResiduals(x.shape[1]), {"counts_ng": x})
    assert_pearson_close(y, scanpy_pearson(x))
    assert np.isfinite(y).all()


def test_pearson_per_batch_matches_scanpy_batch_by_batch() -> None:
    x, codes = counts(), obs_codes(WU2020, "batch")
    x = x[:, most_detected_genes(x, 5000)]
    transform = PearsonResiduals(x.shape[1], int(codes.max()) + 1, "batch_n")
    y = fit_and_apply(transform, {"counts_ng": x, "batch_n": codes})
    assert_pearson_close(y, per_group(scanpy_pearson, x, codes))


def test_pearson_theta_and_clip_options() -> None:
    x = counts()
    x = x[:, most_detected_genes(x, 2000)]
    transform = PearsonResiduals(x.shape[1], theta=10.0, clip=2.0)
    y = fit_and_apply(transform, {"counts_ng": x})
    assert_pearson_close(y, scanpy_pearson(x, theta=10.0, clip=2.0))
    assert transform.clip_value == 2.0
    restored = PearsonResiduals(x.shape[1], theta=10.0, clip=2.0)
    restored.restore_fitted(transform.fitted_state())
    batch = {"counts_ng": torch.from_numpy(x)}
    torch.testing.assert_close(restored(batch)["x_ng"], transform(batch)["x_ng"])
    assert repr(transform) == "PearsonResiduals(n_genes=2000, theta=10.0, clip=2.0)"
    with pytest.raises(ConfigError, match="theta > 0"):
        PearsonResiduals(3, theta=0)


def test_pearson_refuses_fpkm_with_the_value_found() -> None:
    fpkm = counts("singlecell/hsmm_myoblast_timecourse_fpkm.h5ad").astype(np.float32)
    transform = PearsonResiduals(fpkm.shape[1])
    metric = transform.fit_metric()
    batch = {"counts_ng": torch.from_numpy(fpkm[:50])}
    with pytest.raises(
        DataFileError, match=r"raw non-negative integer counts in 'counts_ng', but found"
    ) as error:
        metric.update(batch)
    assert "FPKM" in str(error.value)
    transform.load_fitted(PearsonResiduals(fpkm.shape[1]).fitted_state())
    with pytest.raises(DataFileError, match="PearsonResiduals needs raw"):
        transform(batch)


def test_pearson_accepts_integer_valued_floats_and_unseen_counts() -> None:
    x = counts()[:, :300]
    transform = PearsonResiduals(x.shape[1])
    y_int = fit_and_apply(transform, {"counts_ng": x})
    y_float = fit_and_apply(PearsonResiduals(x.shape[1]), {"counts_ng": x.astype(np.float32)})
    np.testing.assert_array_equal(y_int, y_float)
    # A gene without train counts that has counts at predict time hits the clip, never inf/NaN.
    zero_gene = int(np.nonzero(x.sum(0) == 0)[0][0])
    unseen = torch.zeros(1, x.shape[1], dtype=torch.int32)
    unseen[0, zero_gene] = 3
    z = transform({"counts_ng": unseen})["x_ng"]
    assert float(z[0, zero_gene]) == pytest.approx(np.sqrt(len(x)))
    assert torch.isfinite(z).all()


def test_pearson_group_without_train_cells_uses_global_totals() -> None:
    x = counts()[:, :300]
    codes = np.where(np.arange(len(x)) % 2 == 0, 0, 1)
    grouped = PearsonResiduals(x.shape[1], 3, "batch_n")
    fit_and_apply(grouped, {"counts_ng": x, "batch_n": codes})
    assert grouped.fitted_b.tolist() == [True, True, False]
    global_only = PearsonResiduals(x.shape[1])
    fit_and_apply(global_only, {"counts_ng": x})
    batch = {"counts_ng": torch.from_numpy(x[:4]), "batch_n": torch.tensor([2, -1, 2, -1])}
    torch.testing.assert_close(grouped(batch)["x_ng"], global_only(batch)["x_ng"])
