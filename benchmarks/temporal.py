"""TemporalDataModule: cells/s of sequence mode beside per-cell batches, backed, 20,000 genes.

    python benchmarks/temporal.py --out benchmarks/results/temporal.json [--busy] [--seconds 30]

Data: the synthetic benchmark file (``python benchmarks/make_synthetic.py --cells 100000
--genes 20000 --nnz 2000``), whose ``time`` column puts each of its 4 library batches at one time
point (0, 24, 48, 72). Both rows read the file backed and normalize every batch on the CPU as
``on_after_batch_transfer`` does (per-step z-score, kinetics features, time embedding): per-cell
batches of 256 cells, and batches of 4 sequences of 64 cells (256 positions, strategy
``uniform``). Cells/s counts real cells; the statistics are fitted before timing. The issue's
target: a cell in a sequence costs at most 1.5x a cell in a per-cell batch. ``--busy`` runs a
spinning neighbour process on one core during the measurement.
"""

from __future__ import annotations

import time
import warnings
from typing import Any

import torch
from common import SYNTHETIC_DATA, run_benchmark


def rate(sequence_mode: bool, seconds: float, warmup: int = 5) -> dict[str, Any]:
    from enhanced_dm import TemporalDataModule

    warnings.simplefilter("ignore", UserWarning)
    options: dict[str, Any] = (
        {"sequence_mode": True, "max_sequence_length": 64, "batch_size": 4}
        if sequence_mode
        else {"batch_size": 256}
    )
    dm = TemporalDataModule(
        str(SYNTHETIC_DATA),
        backed=True,
        time_key="time",
        val_fraction=0.0,
        progress=False,
        **options,
    )
    started = time.perf_counter()
    dm.setup("fit")
    setup_s = time.perf_counter() - started
    cells = batches = 0
    begin = None
    with torch.no_grad():
        for epoch in range(1000):
            loader = dm.train_dataloader()
            loader.sampler.set_epoch(epoch)  # type: ignore[attr-defined]
            for batch in loader:
                out = dm.normalize(batch, stage="train")
                batches += 1
                if batches == warmup:
                    begin, cells = time.perf_counter(), 0
                    continue
                mask = out.get("mask_ns")
                cells += int(mask.sum()) if mask is not None else out["x_ng"].shape[0]
                if begin is not None and time.perf_counter() - begin >= seconds:
                    break
            if begin is not None and time.perf_counter() - begin >= seconds:
                break
    assert begin is not None
    elapsed = time.perf_counter() - begin
    return {
        "mode": "sequences (4 x 64)" if sequence_mode else "cells (256)",
        "cells_per_s": cells / elapsed,
        "measured_s": elapsed,
        "batches": batches - warmup,
        "setup_s": setup_s,
    }


def measure(arguments: Any) -> dict[str, Any]:
    rows = [rate(False, arguments.seconds), rate(True, arguments.seconds)]
    cost = rows[0]["cells_per_s"] / rows[1]["cells_per_s"]
    print(rows, f"a sequence cell costs {cost:.2f}x a per-cell cell", flush=True)
    return {"backed": True, "rows": rows, "sequence_cell_cost_relative_to_per_cell": cost}


def main() -> None:
    run_benchmark(__doc__, measure, [("--seconds", float, 30.0)])


if __name__ == "__main__":
    main()
