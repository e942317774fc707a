"""Robust, quantile and Pearson normalization through BaseEnhancedDataModule, against the oracles."""

from __future__ import annotations

from pathlib import Path

import anndata as ad
import numpy as np
import pytest

from enhanced_dm import BaseEnhancedDataModule
from enhanced_dm.errors import ConfigError, DataFileError
from enhanced_dm.fitting import fit_or_load as datamodule_base
from tests.datamodules.test_base import predicted_x
from tests.helpers import shared_data
from tests.transforms.gene_normalization_helpers import (
    WU2020,
    assert_pearson_close,
    assert_robust_close,
    counts,
    log_normalized,
    most_detected_genes,
    obs_codes,
    per_group,
    scanpy_pearson,
    sklearn_quantile,
    untied,
)

N_GENES = 500  # the most-detected genes: the oracles (sklearn loops over genes) stay fast


def make_dm(**options) -> BaseEnhancedDataModule:  # type: ignore[no-untyped-def]
    defaults = dict(data=shared_data(WU2020), val_fraction=0.0, batch_size=128, progress=False)
    return BaseEnhancedDataModule(**{**defaults, **options})


def gene_subset() -> tuple[list[str], np.ndarray]:
    """Names and columns of the most-detected genes (the DataModule keeps the file's library size)."""
    columns = most_detected_genes(counts(), N_GENES)
    names = ad.read_h5ad(shared_data(WU2020), backed="r").var_names[columns].tolist()
    return names, columns


@pytest.mark.parametrize("grouped", [False, pytest.param(True, marks=pytest.mark.slow)])
def test_robust_through_the_datamodule(grouped: bool) -> None:
    """Against numpy on the DataModule's own log-normalized input (``normalization_type="none"``),
    which differs from scanpy's float32 matrix by an ulp: the MAD of a difference of values turns
    that into relative scale errors of ~1e-6, so the robust step is checked on identical input."""
    options = dict(batch_key="batch", batch_aware_normalization=True) if grouped else {}
    names, columns = gene_subset()
    x = predicted_x(make_dm(normalization_type="robust", genes=names, **options))
    log_input = predicted_x(make_dm(normalization_type="none", genes=names))
    assert np.abs(log_input - log_normalized()[:, columns]).max() < 1e-6
    codes = obs_codes(WU2020, "batch") if grouped else None
    assert_robust_close(x, log_input, codes)


@pytest.mark.parametrize("grouped", [False, pytest.param(True, marks=pytest.mark.slow)])
def test_quantile_through_the_datamodule(grouped: bool) -> None:
    """Against sklearn on the DataModule's own log-normalized input: an ulp of difference from
    scanpy's matrix can tie or untie two values, which moves them by up to a tie's width."""
    names = gene_subset()[0]
    options = dict(batch_key="batch", batch_aware_normalization=True) if grouped else {}
    x = predicted_x(make_dm(normalization_type="quantile", genes=names, **options))
    log_input = predicted_x(make_dm(normalization_type="none", genes=names))
    codes = obs_codes(WU2020, "batch") if grouped else np.zeros(len(x), dtype=np.int64)
    expected = per_group(sklearn_quantile, log_input, codes)
    assert np.abs(x - expected)[untied(log_input, codes)].max() <= 1e-3


@pytest.mark.parametrize("grouped", [False, pytest.param(True, marks=pytest.mark.slow)])
def test_pearson_through_the_datamodule(grouped: bool) -> None:
    options = dict(batch_key="batch", batch_aware_normalization=True) if grouped else {}
    names, columns = gene_subset()  # scanpy sums each cell over the matrix's genes, as we do
    dm = make_dm(normalization_type="pearson", per_cell_normalization=False, genes=names, **options)
    x = predicted_x(dm)
    codes = obs_codes(WU2020, "batch") if grouped else np.zeros(len(x), dtype=np.int64)
    reference_input = counts()[:, columns].astype(np.float64)
    assert_pearson_close(x, per_group(scanpy_pearson, reference_input, codes))


def test_options_reach_the_transforms() -> None:
    dm = make_dm(
        robust_normalization=True,
        max_value=3.0,
        stats_max_cells=200,
        seed=4,
        genes=gene_subset()[0],
    )
    dm.setup("fit")
    robust = dict(dm.pipeline.named_transforms())["robust"]
    assert (robust.stats_max_cells, robust.seed, robust.max_value) == (200, 4, 3.0)
    dm = make_dm(
        quantile_normalization=True,
        normalization_options={"n_quantiles": 50, "output_distribution": "uniform"},
        genes=gene_subset()[0],
    )
    dm.setup("fit")
    quantile = dict(dm.pipeline.named_transforms())["quantile"]
    assert (quantile.n_quantiles, quantile.output_distribution) == (50, "uniform")
    assert quantile.quantiles_gq.shape == (N_GENES, 50)
    dm = make_dm(
        normalization_type="pearson",
        per_cell_normalization=False,
        normalization_options={"theta": 10.0, "clip": 4.0},
        genes=gene_subset()[0],
    )
    dm.setup("fit")
    pearson = dict(dm.pipeline.named_transforms())["pearson"]
    assert (pearson.theta, pearson.clip) == (10.0, 4.0)


@pytest.mark.filterwarnings("ignore:normalization_type='pearson' expects raw integer counts")
def test_pearson_refuses_per_cell_normalization_and_fpkm() -> None:
    with pytest.raises(ConfigError, match="raw counts"):
        make_dm(normalization_type="pearson").setup("fit")
    dm = make_dm(
        data=shared_data("singlecell/hsmm_myoblast_timecourse_fpkm.h5ad"),
        normalization_type="pearson",
        per_cell_normalization=False,
    )
    with pytest.raises(
        DataFileError, match="PearsonResiduals needs raw non-negative integer counts"
    ):
        dm.setup("fit")


def test_a_robust_cache_is_never_reused_by_quantile(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each kind writes its own cache file, and a later run of the same kind loads it (no refit)."""
    names = gene_subset()[0]
    log_input = predicted_x(make_dm(normalization_type="none", genes=names))
    paths = {}
    for kind in ("robust", "quantile", "robust", "quantile"):
        if kind in paths:  # both caches exist: fitting again would be a cache miss

            def no_refit(*args, **kwargs):  # type: ignore[no-untyped-def]
                raise AssertionError("refitted instead of loading its cache")

            monkeypatch.setattr(datamodule_base, "fit_pipeline", no_refit)
        dm = make_dm(normalization_type=kind, genes=names, stats_cache_dir=tmp_path)
        x = predicted_x(dm)
        if kind in paths:
            assert dm.stats_cache_path == paths[kind]
        paths[kind] = dm.stats_cache_path
        if kind == "quantile":
            expected = sklearn_quantile(log_input)
            mask = untied(log_input, np.zeros(len(x), dtype=np.int64))
            assert np.abs(x - expected)[mask].max() <= 1e-3
        else:
            assert_robust_close(x, log_input)
    assert paths["robust"] != paths["quantile"]
    assert len(list(tmp_path.glob("*.pt"))) == 2
