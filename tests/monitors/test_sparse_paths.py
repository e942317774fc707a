"""The sparse and fast paths of the kernels and monitors give what the dense, plain forms give."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pytest
import scipy.sparse as sp
import torch

from enhanced_dm.csr import dense_origin, flat_positions_of_stored_values, shared_csr_structure
from enhanced_dm.monitors.input_stats import InputStatsMetric
from enhanced_dm.monitors.output_stats import OutputStatsMetric
from enhanced_dm.transforms import functional as F
from tests.helpers import shared_data


def as_torch_csr(matrix: sp.csr_matrix) -> torch.Tensor:
    return torch.sparse_csr_tensor(
        torch.from_numpy(matrix.indptr.astype(np.int64)),
        torch.from_numpy(matrix.indices.astype(np.int64)),
        torch.from_numpy(matrix.data),
        size=matrix.shape,
    )


@pytest.fixture(scope="module")
def log_wu2020() -> sp.csr_matrix:
    """wu2020 counts after total-count (1e4) and log1p: the input a z-score sees."""
    counts = ad.read_h5ad(shared_data("singlecell/wu2020_tcells_counts.h5ad")).X[:300]
    totals = np.asarray(counts.sum(1)).ravel()
    scaled = sp.diags(1e4 / totals) @ counts.astype(np.float32)
    return sp.csr_matrix(np.log1p(scaled.toarray()).astype(np.float32))


@pytest.mark.parametrize("max_value", [None, 2.5])
def test_sparse_standardize_equals_the_dense_form_bit_for_bit(
    log_wu2020: sp.csr_matrix, max_value: float | None
) -> None:
    dense = torch.from_numpy(log_wu2020.toarray())
    center = dense.mean(0)
    scale = dense.std(0).clamp_min(1e-3)
    expected = F.standardize(dense, center, scale, max_value)
    got = F.standardize(as_torch_csr(log_wu2020), center, scale, max_value)
    assert got.layout == torch.strided
    assert torch.equal(got, expected)


def test_input_stats_from_csr_equal_the_dense_count_with_explicit_zeros() -> None:
    # Row 0: a count and an explicitly stored zero; row 1: only an explicit zero (a zero-count
    # cell all the same); row 2: one count. Genes 2 and 3 are never expressed.
    counts = sp.csr_matrix(
        (np.array([3, 0, 0, 2], np.int32), np.array([1, 3, 2, 0]), np.array([0, 2, 3, 4])),
        shape=(3, 4),
    )
    assert counts.nnz == 4
    sparse, dense = InputStatsMetric(4), InputStatsMetric(4)
    sparse.update(as_torch_csr(counts))
    dense.update(torch.from_numpy(counts.toarray()))
    assert sparse.compute() == dense.compute()
    assert sparse.compute()["zero_count_cells"] == 1.0
    assert sparse.compute()["all_zero_genes"] == 2.0


def test_output_stats_tell_a_float32_overflow_from_a_nan() -> None:
    huge = torch.full((4, 8), 3e38)  # finite, but their float32 sum overflows
    metric = OutputStatsMetric()
    metric.update(huge)
    assert not metric.last_had_nonfinite
    assert metric.compute()["nonfinite_count"] == 0.0
    assert metric.compute()["mean"] == pytest.approx(3e38, rel=1e-6)
    huge[0, 0] = float("nan")
    metric.update(huge)
    assert metric.last_had_nonfinite
    assert metric.compute()["nonfinite_count"] == 1.0


def test_input_stats_from_real_csr_equal_the_dense_count(log_wu2020: sp.csr_matrix) -> None:
    counts = log_wu2020.copy()
    counts.data = np.ceil(counts.data)  # stored values all non-zero: the fast path
    counts[:5] = 0  # five cells without counts
    counts.eliminate_zeros()
    sparse, dense = InputStatsMetric(counts.shape[1]), InputStatsMetric(counts.shape[1])
    sparse.update(as_torch_csr(counts))
    dense.update(torch.from_numpy(counts.toarray()))
    assert sparse.compute() == dense.compute()
    assert sparse.compute()["zero_count_cells"] == 5.0


@pytest.mark.parametrize("clip", [0.5, 100.0])
def test_output_stats_count_clipped_values_as_numpy_does(clip: float) -> None:
    values = torch.from_numpy(np.random.default_rng(0).normal(size=(64, 50)).astype(np.float32))
    metric = OutputStatsMetric(clip_value=clip)
    metric.update(values)
    expected = float((np.abs(values.numpy()) >= clip).mean())
    assert metric.compute()["clipped_fraction"] == pytest.approx(expected, abs=1e-12)


def test_densify_alternating_structures_of_one_shape(log_wu2020: sp.csr_matrix) -> None:
    # Inside shared_csr_structure the positions of the last structure are reused: alternating
    # two structures of the same shape, and a matrix sharing one's structure with other values,
    # must stay exact; the block's end drops what it held.
    first, second = log_wu2020[:100], log_wu2020[100:200]
    a, b = as_torch_csr(first), as_torch_csr(second)
    with shared_csr_structure():
        for matrix, expected in [(a, first), (b, second), (a, first)]:
            assert np.array_equal(F.densify(matrix).numpy(), expected.toarray())
        doubled = F.map_stored_values(b, b.values() * 2)
        assert np.array_equal(F.densify(doubled).numpy(), 2 * second.toarray())
        assert flat_positions_of_stored_values(doubled) is flat_positions_of_stored_values(b)
    assert flat_positions_of_stored_values(b) is not flat_positions_of_stored_values(b)


def _summaries_agree(
    fused: dict[str, float], plain: dict[str, float], values: np.ndarray | None = None
) -> None:
    """Counts and extremes exactly as the dense read; the moments closer to float64 numpy than
    the dense read's float32 sums are (those are within 1e-4, the fused ones within 1e-6: the
    background part is summed in float64). Without ``values``: moments within 1e-4 of the
    dense read."""
    for key in ("cells_seen", "zero_fraction", "nonfinite_count", "clipped_fraction", "min", "max"):
        assert fused[key] == plain[key], key
    if values is None:
        assert fused["mean"] == pytest.approx(plain["mean"], rel=1e-4, abs=1e-6)
        assert fused["std"] == pytest.approx(plain["std"], rel=1e-4)
        return
    exact = values.astype(np.float64)
    assert fused["mean"] == pytest.approx(exact.mean(), abs=1e-6)
    assert fused["std"] == pytest.approx(exact.std(), rel=1e-6)
    assert plain["std"] == pytest.approx(exact.std(), rel=1e-4)


@pytest.mark.parametrize("max_value", [None, 1.5])
def test_monitor_of_a_z_score_from_its_stored_values_equals_reading_every_entry(
    log_wu2020: sp.csr_matrix, max_value: float | None
) -> None:
    # The fused summary (stored values + background row per column) against the dense read, on
    # a real z-score output; one gene's background is exactly 0 (centre 0), so zeros come from
    # both parts, and with max_value some values of both parts are clipped.
    dense = torch.from_numpy(log_wu2020.toarray())
    center, scale = dense.mean(0), dense.std(0).clamp_min(1e-3)
    center[3] = 0.0
    csr = as_torch_csr(log_wu2020)
    fused, plain = OutputStatsMetric(clip_value=max_value), OutputStatsMetric(max_value)
    for _ in range(2):  # accumulates across batches
        with shared_csr_structure():
            output = F.standardize(csr, center, scale, max_value)
            assert dense_origin(output) is not None
            fused.update(output)
        assert dense_origin(output) is None  # nothing outlives the block
        plain.update(output)
    _summaries_agree(fused.compute(), plain.compute(), output.numpy())
    assert plain.compute()["zero_fraction"] > 0
    if max_value is not None:
        assert plain.compute()["clipped_fraction"] > 0


def test_monitor_reads_every_entry_after_an_in_place_write_or_non_finite_values(
    log_wu2020: sp.csr_matrix,
) -> None:
    csr = as_torch_csr(log_wu2020[:50])
    background = torch.zeros(csr.shape[1])
    with shared_csr_structure():
        written = F.densify(csr, background)
        written[0, 0] = 123.0  # the recorded origin no longer describes it
        assert dense_origin(written) is None
        fused, plain = OutputStatsMetric(), OutputStatsMetric()
        fused.update(written)
        plain.update(written.clone())
        assert fused.compute() == plain.compute()
        assert fused.compute()["max"] == 123.0
        background[1] = float("nan")
        with_nan = F.densify(csr, background)
        nan_metric = OutputStatsMetric()
        nan_metric.update(with_nan)  # falls back to the value-by-value count
        assert nan_metric.last_had_nonfinite
        unstored_in_column_1 = 50 - int((log_wu2020[:50, 1] != 0).sum())
        assert nan_metric.compute()["nonfinite_count"] == unstored_in_column_1


@pytest.mark.parametrize("dense_counts", [True, False])
def test_pipeline_statistics_equal_plain_metrics_reading_every_output(
    tmp_path, dense_counts: bool
) -> None:
    # The DataModule's monitors (fused: input and z-score summarized from stored values) against
    # fresh metrics fed each step's output outside any pipeline call (every entry read).
    from enhanced_dm import BaseEnhancedDataModule
    from enhanced_dm.monitors.input_stats import InputStatsMetric as Input

    dm = BaseEnhancedDataModule(
        data=shared_data("singlecell/wu2020_tcells_counts.h5ad"),
        val_fraction=0.0,
        batch_size=64,
        progress=False,
        stats_cache_dir=tmp_path,
        dense_counts=dense_counts,
    )
    dm.setup("fit")
    assert dm.pipeline is not None and dm.store is not None
    names = [name for name, _ in dm.pipeline.named_transforms()]
    plain = {name: OutputStatsMetric() for name in names}
    plain_input = Input(int(dm.store.n_genes))
    for batch in dm.train_dataloader():
        output = dm.normalize(batch)
        plain_input.update(F.densify(batch["counts_ng"]))
        with torch.no_grad():
            steps = dm.pipeline(batch, stop_before=names.index("z_score"))
        plain["log1p"].update(F.densify(steps["x_ng"]))
        plain["z_score"].update(output["x_ng"].clone())  # a copy carries no origin
    stats = dm.get_normalization_stats()
    for name in ("log1p", "z_score"):
        _summaries_agree(stats[name], plain[name].compute())
    first = stats["densify"]  # the input summary goes to the first step
    expected_input = plain_input.compute()
    assert first["zero_count_cells"] == expected_input["zero_count_cells"]
    assert first["all_zero_genes"] == expected_input["all_zero_genes"] > 0


def test_monitor_of_a_z_score_in_inference_mode(log_wu2020: sp.csr_matrix) -> None:
    # Lightning validates in inference mode, whose tensors keep no version counter.
    dense = torch.from_numpy(log_wu2020.toarray())
    center, scale = dense.mean(0), dense.std(0).clamp_min(1e-3)
    fused, plain = OutputStatsMetric(), OutputStatsMetric()
    with torch.inference_mode(), shared_csr_structure():
        output = F.standardize(as_torch_csr(log_wu2020), center, scale)
        assert dense_origin(output) is not None
        fused.update(output)
    plain.update(output.clone())
    _summaries_agree(fused.compute(), plain.compute(), output.numpy())


def test_shared_structure_is_per_thread(log_wu2020: sp.csr_matrix) -> None:
    # A pipeline call in another thread neither sees this thread's records nor clears them.
    import threading

    csr = as_torch_csr(log_wu2020[:20])
    seen_elsewhere: list[object] = []
    with shared_csr_structure():
        dense = F.densify(csr, torch.zeros(csr.shape[1]))

        def other() -> None:
            with shared_csr_structure():
                seen_elsewhere.append(dense_origin(dense))

        thread = threading.Thread(target=other)
        thread.start()
        thread.join()
        assert seen_elsewhere == [None]
        assert dense_origin(dense) is not None
