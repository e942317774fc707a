"""FullVirtualCellDataModule: what each component costs per batch on the CPU, alone (its own
DataModule against the base pipeline) and inside the full pipeline (time per step, by component).

    python benchmarks/full.py --out benchmarks/results/full.json [--busy]

Data: the real wu2020 T cells (343 cells x 30,727 genes, ../shared/data), in memory; batches of
256 cells drawn with replacement (``--batches`` of them, fixed seed), every DataModule in the
train stage (augmentation and the memory updates run, as in training). wu2020 has no time column:
a uniform random ``pseudotime`` (seed 0) stands in for the temporal component. Median batch time
over three interleaved rounds.
"""

from __future__ import annotations

import sys
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from common import median_batch_ms, run_benchmark

BATCH = 256
DATA = (
    Path(__file__).resolve().parents[2]
    / "shared"
    / "data"
    / "singlecell"
    / "wu2020_tcells_counts.h5ad"
)


def datamodules(adata: Any) -> dict[str, Any]:
    import enhanced_dm as edm

    common: dict[str, Any] = dict(
        val_fraction=0.0, batch_size=BATCH, progress=False, cell_type_key="cell_type"
    )
    timed = dict(time_key="pseudotime")
    memory = dict(state_key="batch")
    return {
        "base": edm.BaseEnhancedDataModule(adata, **common),
        "hierarchical": edm.HierarchicalDataModule(adata, **common),
        "multiscale": edm.MultiScaleDataModule(adata, **common),
        "regulatory": edm.RegulatoryDataModule(adata, **common),
        "resource": edm.ResourceDataModule(adata, **common),
        "temporal": edm.TemporalDataModule(adata, **common, **timed),
        "stochastic": edm.StochasticDataModule(
            adata, **common, normalization_type="z_score", per_cell_normalization=True
        ),
        "memory": edm.MemoryDataModule(adata, **common, **memory),
        "full": edm.FullVirtualCellDataModule(adata, **common, **timed, **memory),
    }


def step_owners(dm: Any) -> dict[str, str]:
    """Pipeline step -> the component that contributed it (the base's own steps: "base")."""
    owners = {name: "base" for name in dm.pipeline.names}
    for component in dm.components:
        for name, _, _ in component.transforms():
            owners[name] = component.name
    return owners


def per_component_ms(dm: Any, batches: list[dict[str, Any]]) -> dict[str, float]:
    """Median per batch of the time spent in each component's steps (monitors included) inside
    ``dm``'s pipeline, in the train stage."""
    from enhanced_dm.transforms.context import StepContext

    owners = step_owners(dm)
    totals: dict[str, list[float]] = {}
    for index, batch in enumerate(batches):
        spent: dict[str, float] = dict.fromkeys(set(owners.values()), 0.0)
        last = [time.perf_counter()]

        def observe(
            name: str,
            transform: Any,
            out: Any,
            spent: dict[str, float] = spent,
            last: list[float] = last,
        ) -> None:
            assert dm.monitor is not None
            dm.monitor.observe(name, transform, out)
            now = time.perf_counter()
            spent[owners[name]] += now - last[0]
            last[0] = now

        context = StepContext("train", seed=0, batch_index=index)
        dm.pipeline.train(True)
        out = dm.pipeline(dict(batch), context, on_output=observe)
        for component in dm.components:  # running state (the memory bank) after the batch
            if component.has_running_state:
                started = time.perf_counter()
                component.update_running(out, context)
                spent[component.name] += time.perf_counter() - started
        for owner, seconds in spent.items():
            totals.setdefault(owner, []).append(seconds)
    return {owner: 1e3 * float(np.median(values)) for owner, values in totals.items()}


def measure(batches_wanted: int) -> dict[str, Any]:
    import anndata as ad

    warnings.simplefilter("ignore", UserWarning)
    adata = ad.read_h5ad(DATA)
    adata.obs["pseudotime"] = np.random.default_rng(0).uniform(0, 10, adata.n_obs)
    modules = datamodules(adata)
    rng = np.random.default_rng(1)
    rows = [rng.integers(0, adata.n_obs, BATCH) for _ in range(batches_wanted)]
    batches = {}
    for name, dm in modules.items():
        dm.setup("fit")
        batches[name] = [{**dm.store.read(cells), "batch_index": i} for i, cells in enumerate(rows)]
    with torch.no_grad():
        measured = median_batch_ms(
            {
                name: (lambda batch, dm=dm: dm.normalize(batch, stage="train"))
                for name, dm in modules.items()
            },
            batches,
        )
        inside = per_component_ms(modules["full"], batches["full"])
    base = measured["base"]
    alone = [
        {"datamodule": name, "median_batch_ms": ms, "relative_to_base": ms / base}
        for name, ms in measured.items()
    ]
    full = [
        {"component": name, "median_ms_per_batch": ms, "share_of_full": ms / measured["full"]}
        for name, ms in sorted(inside.items(), key=lambda item: -item[1])
    ]
    print(alone, full, sep="\n", flush=True)
    return {"batch": BATCH, "cells": int(adata.n_obs), "genes": int(adata.n_vars),
            "alone": alone, "inside_full": full}  # fmt: skip


def main() -> None:
    run_benchmark(
        __doc__,
        lambda arguments: measure(arguments.batches),
        [("--batches", int, 12)],
        data=DATA,
    )


if __name__ == "__main__":
    sys.exit(main())
