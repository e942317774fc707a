"""Two gloo ranks give the same rank statistics as one process (the pruned ``cat`` gather)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from enhanced_dm.fitting.rank_stats import QuantileStatsMetric
from tests.transforms.gene_normalization_helpers import batches


def _data() -> np.ndarray:
    return np.random.default_rng(0).gamma(0.5, 1.0, size=(3000, 40)).astype(np.float32)


def _rank_main(rank: int, world_size: int, init_file: str, out_dir: str) -> None:
    dist.init_process_group(
        "gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size
    )
    x = _data()
    metric = QuantileStatsMetric(x.shape[1], n_quantiles=100, max_cells=500, seed=5)
    rows = np.nonzero((np.arange(len(x)) // 100) % world_size == rank)[0]
    for batch in batches({"x_ng": x}, 64, rows):
        if rank == 0:  # one rank sends CSR (as the pipeline does), the other dense rows
            batch = {**batch, "x_ng": batch["x_ng"].to_sparse_csr()}
        metric.update(batch)
    result = metric.compute()
    torch.save(result, os.path.join(out_dir, f"rank{rank}.pt"))
    dist.destroy_process_group()


@pytest.mark.ddp
@pytest.mark.slow
def test_two_ranks_match_one_process(tmp_path: Path) -> None:
    mp.spawn(_rank_main, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    x = _data()
    single = QuantileStatsMetric(x.shape[1], n_quantiles=100, max_cells=500, seed=5)
    for batch in batches({"x_ng": x}, 1000):
        single.update(batch)
    expected = single.compute()
    for rank in range(2):
        result = torch.load(tmp_path / f"rank{rank}.pt")
        for name, value in expected.items():
            torch.testing.assert_close(result[name], value, rtol=0, atol=0)
