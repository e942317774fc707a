"""RegulatoryDataModule under DDP (two gloo ranks): the fitted detected genes merge across ranks,
so every rank's activities equal those of one process."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist

from enhanced_dm import RegulatoryDataModule
from tests.helpers import shared_data
from tests.test_ddp import WORLD_SIZE, init_gloo, run_ranks

pytestmark = [pytest.mark.ddp, pytest.mark.slow]

WU2020 = "singlecell/wu2020_tcells_counts.h5ad"
OPTIONS = dict(batch_size=32, val_fraction=0.2, seed=3, progress=False)


def _predict(rank: int, tmp_path: Path, data: str) -> None:
    init_gloo(rank, tmp_path)
    try:
        dm = RegulatoryDataModule(data, **OPTIONS)
        dm.setup("fit")
        outs = [dm.normalize(batch) for batch in dm.predict_dataloader()]
        torch.save(
            {
                "cells": torch.cat([o["cell_index_n"] for o in outs]),
                "activity": torch.cat([o["tf_activity_nr"] for o in outs]),
            },
            tmp_path / f"rank{rank}.pt",
        )
    finally:
        dist.destroy_process_group()


def test_two_ranks_give_the_activities_of_one_process(tmp_path: Path) -> None:
    data = str(shared_data(WU2020))
    run_ranks(_predict, tmp_path, data)
    one = RegulatoryDataModule(data, **OPTIONS)
    one.setup("fit")
    expected = torch.cat([one.normalize(b)["tf_activity_nr"] for b in one.predict_dataloader()])
    for rank in range(WORLD_SIZE):
        part = torch.load(tmp_path / f"rank{rank}.pt")
        cells = part["cells"].numpy()
        assert len(cells) > 100
        np.testing.assert_allclose(part["activity"].numpy(), expected[cells].numpy(), atol=1e-6)
