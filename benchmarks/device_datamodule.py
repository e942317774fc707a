"""Check enhanced-dm's real device path on a CUDA GPU: the DataModules, not only the kernels.

    python benchmarks/device_datamodule.py --data-dir DIR --out benchmarks/results/device_datamodule.json

1. Correctness: ``x_ng`` (and the hierarchical DataModule's context tensors) normalized on the GPU
   by ``on_after_batch_transfer`` equal the CPU result (max abs difference reported and checked).
2. Lightning: ``trainer.fit`` for one epoch with ``accelerator="gpu"`` and the stats callback; the
   model asserts it receives dense CUDA tensors. Again from a directly read backed copy with two
   workers and ``pin_memory=True`` (pinned sparse CSR batches).
3. Timings at batch 256 and 4096 on a synthetic in-memory dataset (``--genes``, ``--nnz``): loader
   only (CPU read of CSR batches), transfer + device pipeline, and the device pipeline alone, in
   cells/s, with ``torch.cuda.synchronize`` around each timed region; and a torch profiler
   summary of the last two (the top ops by time, and how many calls synchronize the host with
   the device: issue 22 asks where the time goes).

``--device cpu`` runs the same checks on the CPU (to test the script); without CUDA and without
``--device cpu`` it says so and exits 0.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import anndata as ad
import lightning as L
import numpy as np
import scipy.sparse as sp
import torch
from lightning.fabric.utilities.apply_func import move_data_to_device

from enhanced_dm import BaseEnhancedDataModule, HierarchicalDataModule, NormalizationStatsCallback
from enhanced_dm.data.prepare import prepare_h5ad


class DeviceProbe(L.LightningModule):
    """A linear classifier that checks the batches it gets are dense and on its device."""

    def __init__(self, n_genes: int, n_classes: int) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(n_genes, n_classes)

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        assert batch["x_ng"].device == self.device and batch["x_ng"].layout == torch.strided
        assert (
            batch["counts_ng"].layout == torch.strided
            and not batch["counts_ng"].is_floating_point()
        )
        return torch.nn.functional.cross_entropy(self.layer(batch["x_ng"]), batch["cell_type_n"])

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=1e-3)


def normalized(
    dm: BaseEnhancedDataModule, device: torch.device, keys: list[str]
) -> dict[str, np.ndarray]:
    """Every cell through predict_dataloader() and the transfer hook on ``device``."""
    parts: dict[str, list[np.ndarray]] = {key: [] for key in keys}
    for batch in dm.predict_dataloader():
        out = dm.on_after_batch_transfer(move_data_to_device(batch, device), 0)
        for key in keys:
            value = out[key] if out[key].layout == torch.strided else out[key].to_dense()
            parts[key].append(value.cpu().numpy())
    return {key: np.concatenate(value) for key, value in parts.items()}


def compare(make: Any, device: torch.device, keys: list[str]) -> dict[str, float]:
    cpu_dm, gpu_dm = make(), make()
    cpu_dm.setup("predict")
    gpu_dm.load_state_dict(cpu_dm.state_dict())  # same fitted statistics on both
    gpu_dm.setup("predict")
    cpu, gpu = normalized(cpu_dm, torch.device("cpu"), keys), normalized(gpu_dm, device, keys)
    return {key: float(np.abs(cpu[key] - gpu[key]).max()) for key in keys}


def synthetic(cells: int, genes: int, nnz: int, seed: int = 0) -> ad.AnnData:
    rng = np.random.default_rng(seed)
    stride = genes // nnz  # one stored gene per stride window: unique, sorted, cheap to draw
    columns = np.arange(nnz) * stride + rng.integers(0, stride, size=(cells, nnz))
    values = rng.negative_binomial(2, 0.4, size=(cells, nnz)).astype(np.int32) + 1
    matrix = sp.csr_matrix(
        (values.ravel(), columns.ravel(), np.arange(cells + 1) * nnz), shape=(cells, genes)
    )
    adata = ad.AnnData(matrix)
    adata.obs["batch"] = (np.arange(cells) // 1024).astype(str)
    return adata


def timed(function: Any, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    function()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


SYNCHRONIZING_CALLS = ("cudaStreamSynchronize", "cudaDeviceSynchronize", "cudaMemcpy")
"""Runtime calls in a profile that make the host wait for the device (cudaMemcpyAsync to the
host is counted by its name too: the pipeline reads scalars back for the NaN guard)."""


def profile_summary(function: Any, device: torch.device, rows: int = 25) -> dict[str, Any]:
    """Where the time of ``function()`` goes: torch profiler table (CPU and, on CUDA, device
    time per op, sorted by total time), total host and device time, and the number of calls
    that synchronize the host with the device (each costs a round trip per batch)."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(ProfilerActivity.CUDA)
    with profile(activities=activities) as prof:
        function()
        if device.type == "cuda":
            torch.cuda.synchronize()
    averages = prof.key_averages()
    sort_by = "cuda_time_total" if device.type == "cuda" else "cpu_time_total"
    syncs = {
        event.key: event.count
        for event in averages
        if any(event.key.startswith(name) for name in SYNCHRONIZING_CALLS)
    }
    return {
        "table": averages.table(sort_by=sort_by, row_limit=rows),
        "self_cpu_time_total_ms": sum(event.self_cpu_time_total for event in averages) / 1e3,
        "synchronizing_calls": syncs,
    }


def throughput(adata: ad.AnnData, batch_size: int, device: torch.device) -> dict[str, Any]:
    dm = BaseEnhancedDataModule(
        data=adata,
        batch_key="batch",
        batch_aware_normalization=True,
        val_fraction=0.0,
        batch_size=batch_size,
        progress=False,
    )
    dm.setup("fit")
    batches = list(dm.train_dataloader())
    n_cells = sum(int(batch["cell_index_n"].numel()) for batch in batches)
    loader_s = timed(lambda: list(dm.train_dataloader()), torch.device("cpu"))
    for batch in batches[:3]:  # warm-up: CUDA context, kernels, pipeline moved to the device
        dm.on_after_batch_transfer(move_data_to_device(batch, device), 0)
    on_device = [move_data_to_device(batch, device) for batch in batches]
    pipeline_s = timed(
        lambda: [dm.on_after_batch_transfer(batch, 0) for batch in on_device], device
    )
    end_to_end_s = timed(
        lambda: [dm.on_after_batch_transfer(move_data_to_device(b, device), 0) for b in batches],
        device,
    )
    return {
        "cells": n_cells,
        "loader_cells_per_s": n_cells / loader_s,
        "transfer_and_pipeline_cells_per_s": n_cells / end_to_end_s,
        "pipeline_only_cells_per_s": n_cells / pipeline_s,
        "profile_pipeline_only": profile_summary(
            lambda: [dm.on_after_batch_transfer(batch, 0) for batch in on_device], device
        ),
        "profile_transfer_and_pipeline": profile_summary(
            lambda: [
                dm.on_after_batch_transfer(move_data_to_device(b, device), 0) for b in batches
            ],
            device,
        ),
    }


def pinned_fit(pbmc: Path, device: torch.device, log_dir: Path) -> dict[str, Any]:
    """One epoch from a directly read backed copy, two workers, ``pin_memory=True``: the sparse
    CSR batches are pinned by the DataLoader and copied to the device."""
    with tempfile.TemporaryDirectory() as folder:
        mappable = prepare_h5ad(pbmc, Path(folder) / "pbmc_mappable.h5ad")
        dm = BaseEnhancedDataModule(
            data=mappable,
            backed=True,
            cell_type_key="cell_type",
            batch_size=64,
            num_workers=2,
            pin_memory=device.type == "cuda",
            progress=False,
        )
        dm.setup("fit")
        trainer = L.Trainer(
            max_epochs=1,
            accelerator="gpu" if device.type == "cuda" else "cpu",
            devices=1,
            logger=L.pytorch.loggers.CSVLogger(log_dir / "device_logs"),
            enable_checkpointing=False,
            enable_progress_bar=False,
        )
        trainer.fit(DeviceProbe(dm.n_genes, len(dm.categories["cell_type"])), datamodule=dm)
        return {
            "steps": trainer.global_step,
            "direct_reads": dm.store.sources[0].reads_directly,
            "pin_memory": dm.pin_memory,
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--data-dir", type=Path, required=True, help="holds the real demo h5ad files"
    )
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--cells", type=int, default=16384)
    parser.add_argument("--genes", type=int, default=20000)
    parser.add_argument("--nnz", type=int, default=2000)
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        print("no CUDA device: nothing to check")
        return
    device = torch.device(args.device)
    report: dict[str, Any] = {
        "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
    }
    wu2020, pbmc = (
        args.data_dir / "wu2020_tcells_counts.h5ad",
        args.data_dir / "pbmc68k_reduced_counts.h5ad",
    )
    report["max_abs_diff_cpu_vs_device"] = {
        "z_score_per_batch_wu2020": compare(
            lambda: BaseEnhancedDataModule(
                data=wu2020,
                batch_key="batch",
                batch_aware_normalization=True,
                val_fraction=0.0,
                batch_size=64,
                progress=False,
            ),
            device,
            ["x_ng"],
        ),
        "sparse_counts_clipped_z_score_wu2020": compare(
            lambda: BaseEnhancedDataModule(
                data=wu2020, dense_counts=False, max_value=3.0, val_fraction=0.0, progress=False
            ),
            device,
            ["x_ng", "counts_ng"],
        ),
        "median_target_z_score_pbmc": compare(
            lambda: BaseEnhancedDataModule(
                data=pbmc, target_sum="median", val_fraction=0.0, progress=False
            ),
            device,
            ["x_ng"],
        ),
        "hierarchical_pbmc": compare(
            lambda: HierarchicalDataModule(
                data=pbmc, val_fraction=0.0, num_pathways=200, progress=False
            ),
            device,
            ["x_ng", "pathway_scores_np", "compartment_fraction_nk", "compartment_x_nk"],
        ),
    }
    worst = max(max(values.values()) for values in report["max_abs_diff_cpu_vs_device"].values())
    report["correct_within_1e-4"] = worst < 1e-4

    dm = BaseEnhancedDataModule(data=pbmc, cell_type_key="cell_type", batch_size=64, progress=False)
    dm.setup("fit")
    trainer = L.Trainer(
        max_epochs=1,
        accelerator="gpu" if device.type == "cuda" else "cpu",
        devices=1,
        logger=L.pytorch.loggers.CSVLogger(args.out.parent / "device_logs"),
        enable_checkpointing=False,
        enable_progress_bar=False,
        callbacks=[NormalizationStatsCallback(log_every_n_steps=2)],
    )
    trainer.fit(DeviceProbe(dm.n_genes, len(dm.categories["cell_type"])), datamodule=dm)
    report["lightning_fit"] = {
        "steps": trainer.global_step,
        "stats_after_fit": dm.get_normalization_stats()["z_score"],
    }

    report["lightning_fit_backed_pinned"] = pinned_fit(pbmc, device, args.out.parent)

    adata = synthetic(args.cells, args.genes, args.nnz)
    report["throughput"] = {str(size): throughput(adata, size, device) for size in (256, 4096)}
    report["synthetic"] = {"cells": args.cells, "genes": args.genes, "nnz_per_cell": args.nnz}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))
    if not report["correct_within_1e-4"]:
        raise SystemExit(f"device results differ from the CPU by {worst}")


if __name__ == "__main__":
    main()
