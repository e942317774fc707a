"""TemporalDataModule sequence mode under DDP (two gloo ranks): within an epoch the ranks' sequences
are disjoint, no cell is served twice, and each rank gets the same number of batches."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist

from enhanced_dm import TemporalDataModule
from tests.helpers import shared_data
from tests.test_ddp import WORLD_SIZE, init_gloo, run_ranks

pytestmark = [pytest.mark.ddp, pytest.mark.slow]

HSMM = "singlecell/hsmm_myoblast_timecourse_fpkm.h5ad"
OPTIONS = dict(
    time_key="Hours",
    sequence_mode=True,
    max_sequence_length=12,
    batch_size=3,
    val_fraction=0.2,
    seed=5,
    progress=False,
)


def _serve(rank: int, tmp_path: Path, data: str) -> None:
    init_gloo(rank, tmp_path)
    try:
        dm = TemporalDataModule(data, **OPTIONS)
        dm.setup("fit")
        epochs = {}
        for epoch in (0, 1):
            loader = dm.train_dataloader()
            loader.sampler.set_epoch(epoch)  # type: ignore[attr-defined]
            cells = [dm.normalize(b, stage="train")["cell_index_ns"] for b in loader]
            epochs[epoch] = {
                "batches": len(cells),
                "cells": torch.cat([c.flatten() for c in cells]),
            }
        torch.save(
            {"epochs": epochs, "train": torch.from_numpy(dm.split["train"])},
            tmp_path / f"rank{rank}.pt",
        )
    finally:
        dist.destroy_process_group()


def test_two_ranks_never_serve_a_cell_twice_in_an_epoch(tmp_path: Path) -> None:
    run_ranks(_serve, tmp_path, str(shared_data(HSMM)))
    parts = [torch.load(tmp_path / f"rank{rank}.pt") for rank in range(WORLD_SIZE)]
    train = set(parts[0]["train"].tolist())
    for epoch in (0, 1):
        served = [p["epochs"][epoch]["cells"] for p in parts]
        real = [s[s >= 0].numpy() for s in served]
        together = np.concatenate(real)
        assert len(together) == len(set(together.tolist()))  # disjoint, and no cell twice
        assert set(together.tolist()) <= train
        assert len(together) >= len(train) - 12  # at most one sequence sits the epoch out
        assert parts[0]["epochs"][epoch]["batches"] == parts[1]["epochs"][epoch]["batches"]
    assert not np.array_equal(parts[0]["epochs"][0]["cells"], parts[0]["epochs"][1]["cells"])
