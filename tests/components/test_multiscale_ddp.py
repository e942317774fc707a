"""MultiScaleDataModule and FullVirtualCellDataModule under DDP (two gloo ranks): the HVG sums,
the cellular Gram matrix and the stream variances merge across ranks, so the fitted statistics
(gene choice included) equal those of one process."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.distributed as dist

from enhanced_dm import FullVirtualCellDataModule, MultiScaleDataModule
from enhanced_dm.fitting.driver import fitted_states
from tests.helpers import shared_data
from tests.test_ddp import WORLD_SIZE, init_gloo, run_ranks

pytestmark = [pytest.mark.ddp, pytest.mark.slow]

PBMC = "singlecell/pbmc68k_reduced_counts.h5ad"
BASE: dict[str, Any] = dict(batch_size=32, val_fraction=0.2, seed=3, progress=False)
FULL: dict[str, Any] = dict(time_key="S_score", state_key="phase", cellular_scale_dim=32)
CASES = {
    "multiscale": (MultiScaleDataModule, {"cellular_scale_dim": 32}),
    "full": (FullVirtualCellDataModule, FULL),
}
FITTED = ("molecular_scale", "cellular_scale", "stream_weights")


def _fitted(case: str) -> dict[str, dict[str, torch.Tensor]]:
    cls, options = CASES[case]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        dm = cls(str(shared_data(PBMC)), **BASE, **options)
        dm.setup("fit")
    assert dm.pipeline is not None
    states = fitted_states(dm.pipeline)
    return {name: states[name] for name in FITTED if name in states}


def _fit(rank: int, tmp_path: Path, case: str) -> None:
    init_gloo(rank, tmp_path)
    try:
        torch.save(_fitted(case), tmp_path / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("case", list(CASES))
def test_two_ranks_fit_what_one_process_fits(case: str, tmp_path: Path) -> None:
    run_ranks(_fit, tmp_path, case)
    expected = _fitted(case)
    assert {"molecular_scale", "cellular_scale"} <= set(expected)
    for rank in range(WORLD_SIZE):
        got = torch.load(tmp_path / f"rank{rank}.pt")
        assert set(got) == set(expected)
        for name, state in expected.items():
            for key, value in state.items():
                np.testing.assert_allclose(
                    got[name][key].double().numpy(),
                    value.double().numpy(),
                    rtol=1e-10,
                    atol=1e-10,
                    err_msg=f"rank {rank}: {name}.{key}",
                )
