"""StochasticDataModule under DDP (two gloo ranks): the count noise of one training step differs
between the ranks (each draws from its own stream) and repeats exactly in a second run."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from enhanced_dm import StochasticDataModule
from tests.helpers import shared_data
from tests.test_ddp import init_gloo, run_ranks

pytestmark = [pytest.mark.ddp, pytest.mark.slow]

PBMC = "singlecell/pbmc68k_reduced_counts.h5ad"


def _first_batch(rank: int, tmp_path: Path, data: str, run: int) -> None:
    init_gloo(rank, tmp_path / f"run{run}")
    try:
        dm = StochasticDataModule(data, batch_size=64, val_fraction=0.2, seed=9, progress=False)
        dm.setup("fit")
        out = dm.normalize(next(iter(dm.train_dataloader())), stage="train")
        torch.save(
            {key: out[key] for key in ("noise_strength_n", "noise_nd", "cell_index_n")},
            tmp_path / f"run{run}_rank{rank}.pt",
        )
    finally:
        dist.destroy_process_group()


def test_ranks_draw_different_noise_and_runs_repeat(tmp_path: Path) -> None:
    data = str(shared_data(PBMC))
    for run in (0, 1):
        (tmp_path / f"run{run}").mkdir()
        run_ranks(_first_batch, tmp_path, data, run)
    load = [[torch.load(tmp_path / f"run{run}_rank{r}.pt") for r in (0, 1)] for run in (0, 1)]
    for rank in (0, 1):
        for key in load[0][rank]:
            assert torch.equal(load[0][rank][key], load[1][rank][key]), key
    assert not torch.equal(load[0][0]["noise_strength_n"], load[0][1]["noise_strength_n"])
    assert not torch.equal(load[0][0]["noise_nd"], load[0][1]["noise_nd"])
