"""Peak memory and time of the fitting pass for the rank-statistics normalizations (issue 4).

    python benchmarks/make_synthetic.py --cells 1000000 --genes 2000 --nnz 200 --out benchmarks/data/fit_1m.h5ad
    python benchmarks/fit_memory.py --data benchmarks/data/fit_1m.h5ad --out benchmarks/results/fit_memory_1m.json

Each normalization is fitted in its own child process (``backed=True``, all cells in the train
split, a fresh statistics cache), so its peak resident memory (``ru_maxrss``) is its own: the
interpreter and libraries, the backed reader, the ``stats_max_cells`` subsample and the working
memory of the statistics. The target is < 2 GiB at 1,000,000 cells x 2,000 genes with the default
``stats_max_cells=100_000``; the subsample keeps its rows sparse (``8 x stats_max_cells x nnz per
cell`` bytes, see :mod:`enhanced_dm.fitting.subsample`). The peak of the anonymous resident
memory (``RssAnon``, sampled every 10 ms) is recorded beside it. ``--no-direct-read`` reads with
h5py instead of positional reads (what compressed files get).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from common import PeakMemorySampler


def fit_once(
    data: str, normalization: str, stats_max_cells: int, batch_size: int, direct_read: bool = True
) -> dict[str, Any]:
    """Fit one normalization in this process; time and peak RSS."""
    import anndata

    from enhanced_dm import BaseEnhancedDataModule

    n_cells = anndata.read_h5ad(data, backed="r").n_obs
    with tempfile.TemporaryDirectory() as cache:
        dm = BaseEnhancedDataModule(
            data=data,
            backed=True,
            normalization_type=normalization,
            val_fraction=0.0,
            batch_size=batch_size,
            stats_max_cells=stats_max_cells,
            stats_cache_dir=cache,
            progress=False,
            direct_read=direct_read,
        )
        with PeakMemorySampler(interval_s=0.01) as memory:
            started = time.perf_counter()
            dm.setup("fit")
            seconds = time.perf_counter() - started
    return {
        "normalization": normalization,
        "cells": n_cells,
        "genes": dm.n_genes,
        "stats_max_cells": stats_max_cells,
        "batch_size": batch_size,
        "direct_read": direct_read,
        "setup_seconds": seconds,
        "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
        "peak_anon_rss_gib": memory.peak_anonymous_bytes / 2**30,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--normalizations", nargs="+", default=["z_score", "robust", "quantile"])
    parser.add_argument("--stats-max-cells", type=int, default=100_000)
    parser.add_argument("--batch-size", type=int, default=4096)
    parser.add_argument(
        "--no-direct-read",
        dest="direct_read",
        action="store_false",
        help="read backed rows with h5py instead of positional reads",
    )
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        row = fit_once(
            args.data, args.child, args.stats_max_cells, args.batch_size, args.direct_read
        )
        print(json.dumps(row))
        return
    rows = []
    for normalization in args.normalizations:
        command = [
            sys.executable,
            __file__,
            "--data",
            args.data,
            "--out",
            str(args.out),
            "--child",
            normalization,
            "--stats-max-cells",
            str(args.stats_max_cells),
            "--batch-size",
            str(args.batch_size),
            *([] if args.direct_read else ["--no-direct-read"]),
        ]
        output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
        rows.append(json.loads(output.strip().splitlines()[-1]))
        print(rows[-1], flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"rows": rows, "target_peak_rss_gib": 2.0}, indent=2))


if __name__ == "__main__":
    main()
