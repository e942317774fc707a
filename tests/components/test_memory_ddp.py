"""MemoryDataModule under DDP (two gloo ranks): every rank applies the same moving-statistics
update and writes the same bank slots, so after training both ranks hold identical memory."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from enhanced_dm import MemoryDataModule
from tests.contract import assert_same
from tests.helpers import shared_data
from tests.test_ddp import WORLD_SIZE, init_gloo, run_ranks

pytestmark = [pytest.mark.ddp, pytest.mark.slow]

PBMC = "singlecell/pbmc68k_reduced_counts.h5ad"
OPTIONS = dict(
    state_key="phase",
    cell_type_key="cell_type",
    memory_dim=16,
    memory_size=30,
    batch_size=32,
    val_fraction=0.2,
    seed=4,
    progress=False,
)


def _train(rank: int, tmp_path: Path, data: str) -> None:
    init_gloo(rank, tmp_path)
    try:
        dm = MemoryDataModule(data, **OPTIONS)
        dm.setup("fit")
        cells = []
        for batch in dm.train_dataloader():
            cells.append(dm.normalize(batch, stage="train")["cell_index_n"])
        torch.save(
            {"running": dm.memory.running_state(), "cells": torch.cat(cells)},
            tmp_path / f"rank{rank}.pt",
        )
    finally:
        dist.destroy_process_group()


def test_two_ranks_hold_identical_memory(tmp_path: Path) -> None:
    run_ranks(_train, tmp_path, str(shared_data(PBMC)))
    parts = [torch.load(tmp_path / f"rank{rank}.pt") for rank in range(WORLD_SIZE)]
    assert not set(parts[0]["cells"].tolist()) & set(parts[1]["cells"].tolist())
    assert_same(parts[0]["running"], parts[1]["running"], "running state across ranks")
    bank = parts[0]["running"]["bank"]
    written = set(bank["cell_m"][bank["valid_m"]].tolist())
    assert written & set(parts[1]["cells"].tolist())  # rank 1's cells are in rank 0's bank
    assert parts[0]["running"]["updates"] == len(parts[0]["cells"]) // 32 + (
        len(parts[0]["cells"]) % 32 > 0
    )
