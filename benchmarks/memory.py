"""MemoryDataModule: the per-batch cost of the memory transforms against the base pipeline, on
the CPU.

    python benchmarks/memory.py --out benchmarks/results/memory.json [--busy]

Data: the first ``--cells`` cells (default 10,240) of the synthetic benchmark file
(``python benchmarks/make_synthetic.py --cells 100000 --genes 20000 --nnz 2000``), in memory,
batches of 256. The base DataModule (total count, log1p, z-score, monitors) against
``MemoryDataModule(memory_dim=512, memory_size=1000, num_memory_types=5)`` with the library
batches as states and the 30 cell types as memory types, both in the train stage (the memory
DataModule also updates its moving statistics and writes the bank after each batch, as
training does); the bank is filled before timing. Median batch time over three rounds; the
issue's target: the memory transforms cost at most 50 % of the base pipeline.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import torch
from common import SYNTHETIC_DATA, median_batch_ms, run_benchmark

BATCH = 256


def rows(cells: int) -> list[dict[str, Any]]:
    import anndata as ad

    from enhanced_dm import BaseEnhancedDataModule, MemoryDataModule

    warnings.simplefilter("ignore", UserWarning)
    adata = ad.read_h5ad(SYNTHETIC_DATA, backed="r")[:cells].to_memory()
    common: dict[str, Any] = dict(
        val_fraction=0.0, batch_size=BATCH, progress=False, cell_type_key="cell_type"
    )
    datamodules = {
        "base (total count, log1p, z-score)": BaseEnhancedDataModule(adata, **common),
        "memory (512 dims, 5 x 1000 slots, k=8)": MemoryDataModule(
            adata, memory_dim=512, memory_size=1000, num_memory_types=5, state_key="batch", **common
        ),
    }
    batches = {}
    for name, dm in datamodules.items():
        dm.setup("fit")
        batches[name] = [
            {**dm.store.read(np.arange(i, i + BATCH)), "batch_index": i // BATCH}
            for i in range(0, cells, BATCH)
        ]
        with torch.no_grad():
            for batch in batches[name]:  # fills the bank (5,000 slots) before timing
                dm.normalize(dict(batch), stage="train")
    with torch.no_grad():
        measured = median_batch_ms(
            {
                name: (lambda batch, dm=dm: dm.normalize(batch, stage="train"))
                for name, dm in datamodules.items()
            },
            batches,
        )
    base = measured["base (total count, log1p, z-score)"]
    results = [
        {"pipeline": name, "median_batch_ms": ms, "relative_to_base": ms / base}
        for name, ms in measured.items()
    ]
    print(results, flush=True)
    return results


def main() -> None:
    run_benchmark(
        __doc__,
        lambda arguments: {"batch": BATCH, "rows": rows(arguments.cells)},
        [("--cells", int, 10_240)],
    )


if __name__ == "__main__":
    main()
