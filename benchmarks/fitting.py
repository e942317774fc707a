"""The fitting pass of enhanced-dm against scanpy computing the same statistics in memory.

enhanced-dm: ``setup("fit")`` with the base pipeline (total-count -> log1p -> z-score), a fresh
statistics cache, minus the same ``setup`` with nothing to fit = the fitting passes alone; and
one pass that only reads the train split in the fitting order (the reading part of a pass).
scanpy: ``read_h5ad`` in memory, ``normalize_total(target_sum=1e4)``, ``log1p``, then the
per-gene mean and variance that ``scanpy.pp.scale`` would use (computed on the sparse matrix:
``scale`` itself would densify cells x genes float32). Peak RSS is the process tree's, sampled.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from common import PeakMemorySampler


def _timed(function: Any) -> tuple[Any, float, float]:
    """Run ``function()``; return its value, seconds, peak RSS growth in MiB."""
    with PeakMemorySampler() as memory:
        started = time.perf_counter()
        value = function()
        seconds = time.perf_counter() - started
    return value, seconds, (memory.peak_bytes - memory.baseline_bytes) / 2**20


def enhanced_fitting(
    path: Path,
    batch_size: int,
    block_size: int,
    backed: bool,
    cell_type_key: str,
    cache_dir: str | None = None,
) -> dict[str, Any]:
    """Setup time with and without fitting; the difference is the fitting passes.

    The fitted statistics are written to ``cache_dir`` (must be empty; default a fresh folder),
    so the runner's CPU-normalization row can reuse them instead of fitting again.
    """
    from peers.enhanced import CPU_PIPELINE, LOADER_ONLY

    from enhanced_dm import BaseEnhancedDataModule
    from enhanced_dm.transforms import FittableTransform
    from enhanced_dm.transforms.build import build_pipeline

    def setup(options: dict[str, Any], cache: str | None = None) -> BaseEnhancedDataModule:
        datamodule = BaseEnhancedDataModule(
            data=str(path),
            backed=backed,
            block_size=block_size,
            batch_size=batch_size,
            val_fraction=0.0,
            stats_cache_dir=cache or tempfile.mkdtemp(prefix="enhanced_dm_fit_"),
            cell_type_key=cell_type_key,
            progress=False,
            **options,
        )
        datamodule.setup("fit")
        return datamodule

    plain, plain_s, plain_mb = _timed(lambda: setup(LOADER_ONLY))
    _, read_pass_s, _ = _timed(lambda: _read_in_fitting_order(plain))
    datamodule, fitted_s, fitted_mb = _timed(lambda: setup(CPU_PIPELINE, cache_dir))
    # Streaming passes = transforms that start unfitted (total-count with a fixed target_sum is
    # fitted from the start and costs no pass).
    fresh = build_pipeline(
        datamodule.pipeline_settings(), datamodule.n_genes, datamodule.components
    )
    passes = sum(isinstance(t, FittableTransform) and not t.fitted for t in fresh)
    return {
        "backed": backed,
        "setup_without_fitting_s": plain_s,
        "setup_with_fitting_s": fitted_s,
        "fitting_s": fitted_s - plain_s,
        "fitting_passes": passes,
        "read_pass_s": read_pass_s,
        "peak_rss_delta_mb": fitted_mb,
        "setup_without_fitting_peak_rss_delta_mb": plain_mb,
    }


def _read_in_fitting_order(datamodule: Any) -> int:
    """Read the train split as a fitting pass does (the DataModule's own fitting loader) and do
    nothing else: the reading part of a pass. Returns the cells read."""
    return sum(batch["counts_ng"].shape[0] for batch in datamodule._fitting_dataloader())


def scanpy_fitting(path: Path) -> dict[str, Any]:
    """scanpy in memory: read, normalize_total, log1p, per-gene mean and variance."""
    import anndata
    import scanpy as sc

    def run() -> tuple[np.ndarray, np.ndarray]:
        adata = anndata.read_h5ad(path)
        adata.X = adata.X.astype(np.float32)
        sc.pp.normalize_total(adata, target_sum=1e4)
        sc.pp.log1p(adata)
        x = adata.X
        mean = np.asarray(x.mean(axis=0)).ravel()
        mean_sq = np.asarray(x.multiply(x).mean(axis=0)).ravel()
        n = x.shape[0]
        return mean, (mean_sq - mean**2) * n / (n - 1)

    _, seconds, peak_mb = _timed(run)
    return {"seconds": seconds, "peak_rss_delta_mb": peak_mb, "includes_reading_file": True}
