"""ResourceDataModule: regress-out at scale against scanpy, and the per-batch cost of the resource
transforms against the base pipeline.

    python benchmarks/regress_out.py --out benchmarks/results/regress_out.json [--busy]

Data: the synthetic benchmark file (``python benchmarks/make_synthetic.py --cells 100000
--genes 20000 --nnz 2000``) and its first ``--cells`` rows (written once beside it), genes
``gene_00000`` ... ``gene_00009`` taken as mitochondrial; the bundled GO energy / nutrient sets
with each symbol mapped to a random synthetic gene (so the PCA blocks have their real sizes).

1. **Regress-out of** ``log_total_counts`` **and** ``pct_mito``, each in its own process (peak
   RSS is that process's ``ru_maxrss``): enhanced-dm ``ResourceDataModule(backed=True)``:
   ``setup("fit")`` (every fitting pass: covariates, regression, resource embedding) then one
   pass applying it to every cell (``normalize`` of each batch of 256, what
   ``on_after_batch_transfer`` runs); scanpy: read the file into memory, ``normalize_total``,
   ``log1p``, ``calculate_qc_metrics``, ``regress_out`` (dense: it densifies the matrix; on
   24 GB it is killed for memory at 100,000 x 20,000, hence the smaller sizes).
2. **Per-batch cost** at batch 256 on 20,000 genes, the first ``--batch-cells`` cells in memory:
   ``normalize`` of the same batches by a base DataModule (total count, log1p, z-score) and by
   ResourceDataModules without and with regress-out; the median batch time over three rounds (the configurations taking turns).

``--busy`` runs a spinning neighbour process on one core during both parts.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import resource
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from common import busy_neighbour, machine, median_batch_ms

DATA = Path(__file__).resolve().parent / "data" / "synthetic_100000x20000_2000.h5ad"
MITO_PREFIX = ("gene_0000",)
REGRESSED = ("log_total_counts", "pct_mito")
BATCH = 256


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def synthetic_gene_sets(out: Path, seed: int = 0) -> Path:
    """The bundled energy / nutrient GMT with every symbol mapped to a random synthetic gene."""
    from enhanced_dm.components.resource import DEFAULT_RESOURCE_GENE_SETS
    from enhanced_dm.datasets import bundled_path

    lines = bundled_path(DEFAULT_RESOURCE_GENE_SETS).read_text().splitlines()
    symbols = sorted({gene for line in lines for gene in line.split("\t")[2:]})
    genes = np.random.default_rng(seed).choice(20_000, len(symbols), replace=False)
    mapping = {symbol: f"gene_{gene:05d}" for symbol, gene in zip(symbols, genes, strict=True)}
    out.write_text(
        "".join(
            "\t".join(fields[:2] + [mapping[gene] for gene in fields[2:]]) + "\n"
            for fields in (line.split("\t") for line in lines)
        )
    )
    return out


def subset_file(cells: int) -> Path:
    """The first ``cells`` rows of the benchmark file (written once, beside it)."""
    import anndata as ad

    if cells >= 100_000:
        return DATA
    path = DATA.with_name(f"synthetic_{cells}x20000_2000.h5ad")
    if not path.exists():
        ad.read_h5ad(DATA, backed="r")[:cells].to_memory().write_h5ad(path)
    return path


def enhanced_regress_out(path: str, gene_sets: str, queue: Any) -> None:
    from enhanced_dm import ResourceDataModule

    warnings.simplefilter("ignore", UserWarning)
    started = time.perf_counter()
    dm = ResourceDataModule(
        path,
        resource_gene_sets=gene_sets,
        backed=True,
        regress_out=REGRESSED,
        mito_prefix=MITO_PREFIX,
        per_gene_normalization=False,
        val_fraction=0.0,
        batch_size=BATCH,
        progress=False,
    )
    dm.setup("fit")
    fitted = time.perf_counter()
    checksum = 0.0
    for batch in dm.predict_dataloader():
        checksum += float(dm.normalize(batch)["x_ng"][:, 0].sum())
    done = time.perf_counter()
    queue.put(
        {
            "fit_s": fitted - started,
            "apply_s": done - fitted,
            "total_s": done - started,
            "peak_rss_mb": _peak_rss_mb(),
            "r2_mean": dm.get_resource_stats()["regression"]["r2"]["mean"],
            "checksum": checksum,
        }
    )


def scanpy_regress_out(path: str, gene_sets: str, queue: Any) -> None:
    import anndata as ad
    import scanpy as sc

    warnings.simplefilter("ignore")
    started = time.perf_counter()
    adata = ad.read_h5ad(path)
    adata.X = adata.X.astype(np.float32)
    total = np.asarray(adata.X.sum(1)).ravel()
    adata.var["mt"] = adata.var_names.str.startswith(MITO_PREFIX)
    sc.pp.calculate_qc_metrics(adata, qc_vars=["mt"], percent_top=None, inplace=True)
    adata.obs["log_total_counts"] = np.log(total)
    adata.obs["pct_mito"] = adata.obs["pct_counts_mt"]
    sc.pp.normalize_total(adata, target_sum=1e4)
    sc.pp.log1p(adata)
    sc.pp.regress_out(adata, list(REGRESSED))
    done = time.perf_counter()
    queue.put(
        {
            "total_s": done - started,
            "peak_rss_mb": _peak_rss_mb(),
            "checksum": float(np.asarray(adata.X[:, 0]).sum()),
        }
    )


def in_own_process(target: Any, *args: Any) -> dict[str, Any]:
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=target, args=(*args, queue))
    process.start()
    process.join()
    if process.exitcode != 0:
        return {"status": f"failed (exit code {process.exitcode}; -9: killed, out of memory)"}
    return {"status": "ok", **queue.get()}


def per_batch_costs(path: str, gene_sets: str, cells: int, rounds: int = 3) -> list[dict[str, Any]]:
    import anndata as ad

    from enhanced_dm import BaseEnhancedDataModule, ResourceDataModule

    warnings.simplefilter("ignore", UserWarning)
    adata = ad.read_h5ad(path, backed="r")[:cells].to_memory()
    common: dict[str, Any] = dict(val_fraction=0.0, batch_size=BATCH, progress=False)
    resource_options = dict(mito_prefix=MITO_PREFIX, resource_gene_sets=gene_sets, **common)
    configurations: dict[str, Any] = {
        "base (total count, log1p, z-score)": lambda: BaseEnhancedDataModule(adata, **common),
        "resource": lambda: ResourceDataModule(adata, **resource_options),
        "resource + regress-out": lambda: ResourceDataModule(
            adata, regress_out=REGRESSED, **resource_options
        ),
    }
    datamodules = {name: make() for name, make in configurations.items()}
    for dm in datamodules.values():
        dm.setup("fit")
    store = datamodules["resource"].store
    batches = [store.read(np.arange(i, i + BATCH)) for i in range(0, cells, BATCH)]
    with torch.no_grad():
        measured = median_batch_ms(
            {name: dm.normalize for name, dm in datamodules.items()}, batches, rounds
        )
    base = measured["base (total count, log1p, z-score)"]
    return [
        {"pipeline": name, "median_batch_ms": ms, "relative_to_base": ms / base}
        for name, ms in measured.items()
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", default="100000,50000,25000", help="sizes, comma-separated")
    parser.add_argument("--batch-cells", type=int, default=10_240)
    parser.add_argument("--busy", action="store_true")
    parser.add_argument("--skip-scanpy", action="store_true")
    parser.add_argument("--out", type=Path, required=True)
    arguments = parser.parse_args()
    if not DATA.exists():
        raise SystemExit(f"{DATA} is missing: run benchmarks/make_synthetic.py (see docstring)")
    sizes = [int(size) for size in arguments.cells.split(",")]
    files = {size: str(subset_file(size)) for size in sizes}  # before the measurements
    gene_sets = str(synthetic_gene_sets(DATA.with_name("synthetic_resource_terms.gmt")))
    regressions = []
    with busy_neighbour(arguments.busy):
        for size in sizes:
            ours = in_own_process(enhanced_regress_out, files[size], gene_sets)
            print(size, "enhanced-dm", ours, flush=True)
            theirs = (
                {"status": "skipped"}
                if arguments.skip_scanpy
                else in_own_process(scanpy_regress_out, files[size], gene_sets)
            )
            print(size, "scanpy", theirs, flush=True)
            row: dict[str, Any] = {"cells": size, "enhanced_dm": ours, "scanpy": theirs}
            if ours["status"] == theirs["status"] == "ok":
                row["time_scanpy_over_enhanced"] = theirs["total_s"] / ours["total_s"]
                row["peak_rss_scanpy_over_enhanced"] = theirs["peak_rss_mb"] / ours["peak_rss_mb"]
            regressions.append(row)
        costs = per_batch_costs(str(DATA), gene_sets, arguments.batch_cells)
        print(costs, flush=True)
    from importlib.metadata import version

    arguments.out.write_text(
        json.dumps(
            {
                "settings": {
                    "cells": sizes,
                    "genes": 20_000,
                    "batch_cells": arguments.batch_cells,
                    "batch": BATCH,
                    "regressed": list(REGRESSED),
                    "busy_neighbour": arguments.busy,
                },
                "environment": machine(scanpy=version("scanpy")),
                "regress_out": regressions,
                "per_batch": costs,
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
