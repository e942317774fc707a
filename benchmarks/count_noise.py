"""StochasticDataModule: the per-batch cost of count-noise augmentation against the same pipeline
without it, on the CPU.

    python benchmarks/count_noise.py --out benchmarks/results/count_noise.json [--busy]

Data: the first ``--cells`` cells (default 10,240) of the synthetic benchmark file
(``python benchmarks/make_synthetic.py --cells 100000 --genes 20000 --nnz 2000``), in memory,
batches of 256 (about 512,000 stored counts each). Every row normalizes the same batches in the
train stage (``dm.normalize(batch, stage="train")``: Pearson residuals, noise inputs, monitors);
rows differ only in the noise types on. Median batch time over three rounds, the configurations taking turns; the issue's target:
augmentation costs at most 15 % of the pipeline without it. ``--busy`` runs a spinning
neighbour process on one core during the measurement.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import torch
from common import SYNTHETIC_DATA, median_batch_ms, run_benchmark

BATCH = 256
ROWS = {
    "no augmentation": (),
    "thinning": ("thinning",),
    "size": ("size",),
    "dropout": ("dropout",),
    "thinning + size + dropout": ("thinning", "size", "dropout"),
}


def per_batch_ms(cells: int, rounds: int = 3) -> list[dict[str, Any]]:
    import anndata as ad

    from enhanced_dm import StochasticDataModule

    warnings.simplefilter("ignore", UserWarning)
    adata = ad.read_h5ad(SYNTHETIC_DATA, backed="r")[:cells].to_memory()
    datamodules = {}
    for name, types in ROWS.items():
        dm = StochasticDataModule(
            adata, noise_types=types, val_fraction=0.0, batch_size=BATCH, progress=False
        )
        dm.setup("fit")
        datamodules[name] = dm
    store = next(iter(datamodules.values())).store
    batches = [
        {**store.read(np.arange(i, i + BATCH)), "batch_index": i // BATCH}
        for i in range(0, cells, BATCH)
    ]
    with torch.no_grad():
        measured = median_batch_ms(
            {
                name: (lambda batch, dm=dm: dm.normalize(batch, stage="train"))
                for name, dm in datamodules.items()
            },
            batches,
            rounds,
        )
    base = measured["no augmentation"]
    rows = [
        {"noise": name, "median_batch_ms": ms, "relative_to_no_augmentation": ms / base}
        for name, ms in measured.items()
    ]
    print(rows, flush=True)
    return rows


def main() -> None:
    run_benchmark(
        __doc__,
        lambda arguments: {"batch": BATCH, "rows": per_batch_ms(arguments.cells)},
        [("--cells", int, 10_240)],
    )


if __name__ == "__main__":
    main()
