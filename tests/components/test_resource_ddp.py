"""ResourceDataModule under DDP (two gloo ranks): the regression's and the PCA blocks' sums merge
across ranks, so the fitted coefficients and components equal those of one process."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.distributed as dist

from enhanced_dm import ResourceDataModule
from enhanced_dm.fitting.driver import fitted_states
from tests.helpers import shared_data
from tests.test_ddp import WORLD_SIZE, init_gloo, run_ranks

pytestmark = [pytest.mark.ddp, pytest.mark.slow]

WU2020 = "singlecell/wu2020_tcells_counts.h5ad"
BASE = dict(batch_size=32, val_fraction=0.2, seed=3, progress=False, per_gene_normalization=False)
REGRESSED = ("log_total_counts", "log_genes_detected", "tissue")
FITTED = ("resource_covariates", "regress_out", "resource_embedding")


def _fitted(data: str, options: dict[str, Any]) -> dict[str, dict[str, torch.Tensor]]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        dm = ResourceDataModule(data, **BASE, **options)
        dm.setup("fit")
    assert dm.pipeline is not None
    states = fitted_states(dm.pipeline)
    return {name: states[name] for name in FITTED if name in states}


def _fit(rank: int, tmp_path: Path, data: str, options: dict[str, Any]) -> None:
    init_gloo(rank, tmp_path)
    try:
        torch.save(_fitted(data, options), tmp_path / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def _assert_close(got: dict, expected: dict, tolerances: dict[str, float]) -> None:
    assert set(got) == set(expected) == set(tolerances)
    for name, atol in tolerances.items():
        for key, value in got[name].items():
            np.testing.assert_allclose(
                value.double().numpy(),
                expected[name][key].double().numpy(),
                rtol=0,
                atol=atol,
                err_msg=f"{name}.{key}",
            )


@pytest.mark.parametrize("regress_out", [(), REGRESSED])
def test_two_ranks_fit_the_regression_and_pca_of_one_process(
    regress_out: tuple[str, ...], tmp_path: Path
) -> None:
    data = str(shared_data(WU2020))
    options = {"regress_out": regress_out}
    run_ranks(_fit, tmp_path, data, options)
    expected = _fitted(data, options)
    assert expected["resource_embedding"]["loadings_ud"].abs().sum() > 0
    # Each fit is exact (float64 sums) given its inputs: 1e-10. The PCA after a regression sees
    # residuals that the float32 application of coefficients equal to 1e-16 makes differ by an
    # ulp here and there between the runs, hence 1e-6 for it there.
    tolerances = {"resource_covariates": 1e-10, "resource_embedding": 1e-10}
    if regress_out:
        tolerances.update(regress_out=1e-10, resource_embedding=1e-6)
    for rank in range(WORLD_SIZE):
        _assert_close(torch.load(tmp_path / f"rank{rank}.pt"), expected, tolerances)
