"""MultiScaleDataModule and FullVirtualCellDataModule under DDP (two gloo ranks): the HVG sums,
the cellular Gram matrix and the stream variances merge across ranks, so every fitted statistic
(gene choice included) equals one process's."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import pytest

from enhanced_dm import FullVirtualCellDataModule, MultiScaleDataModule
from tests.helpers import shared_data
from tests.test_ddp import assert_ranks_fit_like_one_process

pytestmark = [pytest.mark.ddp, pytest.mark.slow]

PBMC = "singlecell/pbmc68k_reduced_counts.h5ad"
BASE: dict[str, Any] = dict(batch_size=32, val_fraction=0.2, seed=3, progress=False)
CASES: dict[str, tuple[type, dict[str, Any]]] = {
    "multiscale": (MultiScaleDataModule, {"cellular_scale_dim": 32}),
    "full": (
        FullVirtualCellDataModule,
        {"time_key": "S_score", "state_key": "phase", "cellular_scale_dim": 32},
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_two_ranks_fit_what_one_process_fits(case: str, tmp_path: Path) -> None:
    cls, options = CASES[case]
    factory = functools.partial(cls, str(shared_data(PBMC)), **BASE, **options)
    fitted = assert_ranks_fit_like_one_process(factory, tmp_path)
    assert {"molecular_scale", "cellular_scale"} <= set(fitted)
    assert ("stream_weights" in fitted) == (case == "full")
