"""RobustScale against a numpy median / MAD reference on real data."""

from __future__ import annotations

import numpy as np
import torch

from enhanced_dm.transforms.robust import RobustScale
from tests.transforms.gene_normalization_helpers import (
    WU2020,
    assert_robust_close,
    fit_and_apply,
    log_normalized,
    most_detected_genes,
    obs_codes,
    robust_reference,
)


def test_robust_matches_numpy_median_mad_reference() -> None:
    x = log_normalized()
    # The 4,000 most-detected genes (MAD 0 from ~170 cells down: the mean-AD fallback), 500 seen
    # in one cell (tiny scales), 100 never seen (scale 1): all the branches, without 30k sorts.
    detected = (x > 0).sum(axis=0)
    rare, absent = np.nonzero(detected == 1)[0][:500], np.nonzero(detected == 0)[0][:100]
    x = x[:, np.concatenate([most_detected_genes(x, 4000), rare, absent])]
    assert_robust_close(fit_and_apply(RobustScale(x.shape[1]), {"x_ng": x}), x)


def test_robust_per_batch_matches_reference_batch_by_batch() -> None:
    x, codes = log_normalized(), obs_codes(WU2020, "batch")
    x = x[:, most_detected_genes(x, 3000)]
    transform = RobustScale(x.shape[1], int(codes.max()) + 1, "batch_n")
    y = fit_and_apply(transform, {"x_ng": x, "batch_n": codes})
    assert bool(transform.fitted_b.all())
    assert_robust_close(y, x, codes)


def test_robust_scale_falls_back_to_mean_absolute_deviation_then_one() -> None:
    x = np.array([[0, 0, 5], [0, 0, 5], [0, 4, 5], [3, 2, 5], [1, 0, 5]], dtype=np.float32)
    transform = RobustScale(3)
    fit_and_apply(transform, {"x_ng": x})
    # gene 0: median 0, MAD 0, mean AD 4/5; gene 1: MAD 0, mean AD 6/5; gene 2: constant.
    np.testing.assert_allclose(transform.scale_g.numpy(), [1.2533 * 0.8, 1.2533 * 1.2, 1.0])
    np.testing.assert_array_equal(transform.center_g.numpy(), [0, 0, 5])


def test_robust_max_value_clips_and_state_round_trips() -> None:
    x = log_normalized()
    x = x[:, most_detected_genes(x, 500)]
    transform = RobustScale(x.shape[1], max_value=3.0)
    y = fit_and_apply(transform, {"x_ng": x})
    np.testing.assert_allclose(y, np.clip(robust_reference(x), -3, 3), atol=1e-5)
    restored = RobustScale(x.shape[1], max_value=3.0)
    restored.restore_fitted(transform.fitted_state())
    batch = {"x_ng": torch.from_numpy(x)}
    torch.testing.assert_close(restored(batch)["x_ng"], transform(batch)["x_ng"])


def test_robust_config_and_repr_name_the_options() -> None:
    transform = RobustScale(10, 3, "batch_n", max_value=5.0, stats_max_cells=500, seed=7)
    assert transform.config()["stats_max_cells"] == 500
    assert transform.config()["seed"] == 7
    assert transform.config()["kind"] == "RobustScale"
    assert repr(transform) == "RobustScale(n_genes=10, group_key='batch_n', max_value=5.0)"
