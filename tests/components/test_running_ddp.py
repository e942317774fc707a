"""Running state under DDP (two gloo ranks): every rank ends with the same state, the EMA of the
means over both ranks' batches (Lightning saves rank 0's checkpoint only)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from enhanced_dm import BaseEnhancedDataModule
from tests.components.contract_components import RunningMeanComponent
from tests.helpers import shared_data
from tests.test_ddp import WORLD_SIZE, init_gloo, run_ranks

pytestmark = [pytest.mark.ddp, pytest.mark.slow]

PBMC = "singlecell/pbmc68k_reduced_counts.h5ad"


def _train_one_epoch(rank: int, tmp_path: Path, data: str) -> None:
    init_gloo(rank, tmp_path)
    try:
        dm = BaseEnhancedDataModule(
            data, components=[RunningMeanComponent(decay=0.7)], batch_size=32, progress=False
        )
        dm.setup("fit")
        sums, counts = [], []
        for batch in dm.train_dataloader():
            out = dm.normalize(batch, stage="train")
            sums.append(out["x_ng"].double().sum(0))
            counts.append(out["x_ng"].shape[0])
        torch.save(
            {
                "running": dm.state_dict()["running"]["running_mean"],
                "sums": torch.stack(sums),
                "counts": torch.tensor(counts, dtype=torch.float64),
                "cells": sorted(int(c) for b in dm.train_dataloader() for c in b["cell_index_n"]),
            },
            tmp_path / f"rank{rank}.pt",
        )
    finally:
        dist.destroy_process_group()


def test_two_ranks_end_with_the_same_running_state(tmp_path: Path) -> None:
    run_ranks(_train_one_epoch, tmp_path, str(shared_data(PBMC)))
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD_SIZE)]
    assert not set(ranks[0]["cells"]) & set(ranks[1]["cells"])  # disjoint shards
    assert ranks[0]["running"]["updates"] == ranks[1]["running"]["updates"] > 1
    assert torch.equal(ranks[0]["running"]["mean_g"], ranks[1]["running"]["mean_g"])
    expected = torch.zeros_like(ranks[0]["sums"][0])
    for step in range(ranks[0]["sums"].shape[0]):
        total = sum(rank["sums"][step] for rank in ranks)
        cells = sum(rank["counts"][step] for rank in ranks)
        expected = 0.7 * expected + 0.3 * (total / cells)
    torch.testing.assert_close(ranks[0]["running"]["mean_g"].double(), expected, atol=1e-5, rtol=0)
