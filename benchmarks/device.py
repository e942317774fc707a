"""Throughput of the CUDA device path: sparse CSR transfer + densify + base normalization.

    python benchmarks/device.py --out benchmarks/results/device_h100.json

Synthetic CSR batches (int32 counts, ``--nnz`` nonzeros per cell over ``--genes`` genes) are made
on the fly in pinned host memory. For batch sizes 256 and 4096 it times, in cells/s:

- ``transfer``: host CSR -> device (``non_blocking`` copies from pinned memory);
- ``device_pipeline``: on the device only: densify, total-count normalization (target 1e4),
  log1p, z-score with fixed per-gene mean/std (the fitted buffers), the base pipeline's work;
- ``end_to_end``: both, as ``on_after_batch_transfer`` sees a batch after Lightning's transfer;
- ``*_sparse_first``: the same result with total-count and log1p on the stored values before a
  single densify (enhanced-dm's current order), plain torch.

Bounds: the device's memory bandwidth is measured with a large device-to-device copy and turned
into cells/s for ONE elementwise float32 pass over the genes (read + write ``4 * genes`` bytes
each; about 21M cells/s on an H100 for 20k genes) and for the pipeline's minimum of 4 passes
(densify writes, then normalize, log1p and z-score each read and write, unless fused);
the host-to-device bandwidth gives the transfer bound (``8 * nnz`` bytes per cell).

The kernels are enhanced-dm's ``transforms/functional.py`` when they load (the package itself may
not import on a GPU machine without anndata, so the module file is loaded on its own); else plain
torch ops with the same formulas, and the JSON says which. Without CUDA it says so and exits 0.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import platform
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import torch

REPO = Path(__file__).resolve().parent.parent
BATCH_SIZES = (256, 4096)


def load_kernels() -> tuple[ModuleType | None, str]:
    """enhanced-dm's functional kernels, or ``None`` and why not."""
    try:
        from enhanced_dm.transforms import functional

        return functional, "enhanced_dm.transforms.functional"
    except Exception as error:
        package_error = f"{type(error).__name__}: {error}"
    path = REPO / "enhanced_dm" / "transforms" / "functional.py"
    try:
        spec = importlib.util.spec_from_file_location("enhanced_dm_functional", path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module, f"{path.relative_to(REPO)} (loaded alone; package: {package_error})"
    except Exception as error:
        return None, f"plain torch (enhanced-dm kernels unavailable: {error})"


def make_pipeline(kernels: ModuleType | None) -> Callable[..., torch.Tensor]:
    """densify -> normalize_total(1e4) -> log1p -> z-score, with the library's kernels if any."""

    def pipeline(
        counts_ng: torch.Tensor, mean_g: torch.Tensor, std_g: torch.Tensor
    ) -> torch.Tensor:
        total_n = torch.segment_reduce(
            counts_ng.values().to(torch.float32), "sum", offsets=counts_ng.crow_indices().long()
        )
        if kernels is not None:
            x_ng = kernels.densify(counts_ng)
            x_ng = kernels.normalize_total(x_ng, total_n, 1e4)
            x_ng = kernels.log1p(x_ng)
            return kernels.standardize(x_ng, mean_g, std_g)
        x_ng = counts_ng.to_dense().to(torch.float32)
        x_ng = x_ng * torch.where(total_n > 0, 1e4 / total_n.clamp_min(1e-30), 0.0).unsqueeze(-1)
        return (torch.log1p(x_ng) - mean_g) / std_g

    return pipeline


def sparse_first_pipeline(
    counts_ng: torch.Tensor, mean_g: torch.Tensor, std_g: torch.Tensor
) -> torch.Tensor:
    """The same result with the per-cell steps on the stored values, densified once before z-score.

    Total-count and log1p map 0 to 0, so they run on the ``nnz`` values instead of ``n x g``
    entries (what enhanced-dm's pipeline does since it normalizes CSR batches); plain torch.
    """
    n_cells, n_genes = counts_ng.shape
    crow = counts_ng.crow_indices()
    values = counts_ng.values().to(torch.float32)
    rows = torch.repeat_interleave(
        torch.arange(n_cells, device=crow.device), crow[1:] - crow[:-1], output_size=values.numel()
    )
    total_n = torch.segment_reduce(values, "sum", offsets=crow.long())
    scale_n = torch.where(total_n > 0, 1e4 / total_n.clamp_min(1e-30), 0.0)
    dense_ng = torch.zeros(n_cells, n_genes, dtype=torch.float32, device=crow.device)
    dense_ng.index_put_((rows, counts_ng.col_indices().long()), torch.log1p(values * scale_n[rows]))
    return (dense_ng - mean_g) / std_g


def synthetic_csr(
    n_cells: int, n_genes: int, nnz: int, seed: int, pin: bool = True
) -> torch.Tensor:
    """Host CSR batch (pinned), int32 counts, ``nnz`` sorted distinct genes per cell."""
    generator = torch.Generator().manual_seed(seed)
    keys = torch.rand(n_cells, n_genes, generator=generator)
    columns = keys.topk(nnz, dim=1).indices.sort(dim=1).values.to(torch.int32)
    del keys
    values = 1 + torch.poisson(torch.full((n_cells, nnz), 0.8), generator=generator).to(torch.int32)
    crow = torch.arange(0, (n_cells + 1) * nnz, nnz, dtype=torch.int32)
    parts = [crow, columns.reshape(-1), values.reshape(-1)]
    if pin:
        parts = [part.pin_memory() for part in parts]
    return torch.sparse_csr_tensor(*parts, size=(n_cells, n_genes), check_invariants=False)


def timed(function: Callable[[], Any], repeats: int, warmup: int = 3) -> float:
    """Mean seconds per call, CUDA synchronized."""
    for _ in range(warmup):
        function()
    torch.cuda.synchronize()
    started = time.perf_counter()
    for _ in range(repeats):
        function()
    torch.cuda.synchronize()
    return (time.perf_counter() - started) / repeats


def scatter_densify(counts_ng: torch.Tensor) -> torch.Tensor:
    """float32 dense copy of a CSR batch by one ``index_put_`` (compared with ``to_dense``)."""
    n_cells, n_genes = counts_ng.shape
    crow = counts_ng.crow_indices()
    rows = torch.repeat_interleave(
        torch.arange(n_cells, device=crow.device),
        crow[1:] - crow[:-1],
        output_size=counts_ng.values().numel(),
    )
    dense_ng = torch.zeros(n_cells, n_genes, dtype=torch.float32, device=crow.device)
    dense_ng.index_put_(
        (rows, counts_ng.col_indices().long()), counts_ng.values().to(torch.float32)
    )
    return dense_ng


def stage_breakdown(
    counts_ng: torch.Tensor,
    mean_g: torch.Tensor,
    std_g: torch.Tensor,
    kernels: ModuleType | None,
    seconds: float,
) -> dict[str, float]:
    """Milliseconds per batch of each step alone, to see where the device time goes."""
    dense_ng = counts_ng.to_dense()
    x_ng = dense_ng.to(torch.float32)
    total_n = x_ng.sum(dim=1)
    steps: dict[str, Callable[[], Any]] = {
        "to_dense(csr int32)": lambda: counts_ng.to_dense(),
        "to(float32)": lambda: dense_ng.to(torch.float32),
        "scatter_densify(float32 index_put_)": lambda: scatter_densify(counts_ng),
        "row_total(segment_reduce)": lambda: torch.segment_reduce(
            counts_ng.values().to(torch.float32), "sum", offsets=counts_ng.crow_indices().long()
        ),
        "normalize_total": lambda: x_ng * (1e4 / total_n).unsqueeze(-1),
        "log1p": lambda: torch.log1p(x_ng),
        "standardize": lambda: (x_ng - mean_g) / std_g,
    }
    if kernels is not None:
        steps["kernels.densify"] = lambda: kernels.densify(counts_ng)
        steps["kernels.normalize_total"] = lambda: kernels.normalize_total(x_ng, total_n, 1e4)
        steps["kernels.standardize"] = lambda: kernels.standardize(x_ng, mean_g, std_g)
    out = {}
    for name, step in steps.items():
        single = timed(step, repeats=3)
        out[name] = round(1e3 * timed(step, repeats=max(5, int(seconds / max(single, 1e-6)))), 4)
    return out


def bandwidths(device: torch.device) -> dict[str, float]:
    """Device copy bandwidth (bytes read + written per s) and pinned host-to-device bandwidth."""
    source = torch.empty(2**28, dtype=torch.float32, device=device)  # 1 GiB
    target = torch.empty_like(source)
    device_s = timed(lambda: target.copy_(source), repeats=20)
    host = torch.empty(2**26, dtype=torch.float32).pin_memory()  # 256 MiB
    landing = torch.empty(host.shape, dtype=host.dtype, device=device)
    h2d_s = timed(lambda: landing.copy_(host, non_blocking=True), repeats=10)
    return {
        "device_copy_bytes_per_s": 2 * source.numel() * 4 / device_s,
        "host_to_device_bytes_per_s": host.numel() * 4 / h2d_s,
    }


def main(argv: list[str] | None = None) -> int:
    """Command line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="where to write the JSON")
    parser.add_argument("--genes", type=int, default=20_000)
    parser.add_argument("--nnz", type=int, default=2_000)
    parser.add_argument("--seconds", type=float, default=2.0, help="time per measurement")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("No CUDA GPU is present: nothing measured (device.py needs one).")
        return 0

    device = torch.device("cuda")
    kernels, kernel_source = load_kernels()
    pipeline = make_pipeline(kernels)
    mean_g = torch.rand(args.genes, device=device)
    std_g = torch.rand(args.genes, device=device) + 0.5
    bounds = bandwidths(device)
    one_pass_cells_per_s = bounds["device_copy_bytes_per_s"] / (2 * 4 * args.genes)
    transfer_bound = bounds["host_to_device_bytes_per_s"] / (8 * args.nnz)
    report: dict[str, Any] = {
        "device": torch.cuda.get_device_name(device),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "kernels": kernel_source,
        "genes": args.genes,
        "nnz_per_cell": args.nnz,
        **bounds,
        "bound_one_elementwise_pass_cells_per_s": one_pass_cells_per_s,
        "bound_four_passes_cells_per_s": one_pass_cells_per_s / 4,
        "bound_host_to_device_cells_per_s": transfer_bound,
        "batches": {},
    }
    print(f"{report['device']}, kernels: {kernel_source}")
    print(
        f"bounds: one elementwise pass {one_pass_cells_per_s / 1e6:.1f}M cells/s, "
        f"transfer {transfer_bound / 1e6:.2f}M cells/s"
    )
    for batch_size in BATCH_SIZES:
        host_ng = synthetic_csr(batch_size, args.genes, args.nnz, seed=batch_size)
        resident_ng = host_ng.to(device)

        def transfer(host_ng: torch.Tensor = host_ng) -> torch.Tensor:
            return host_ng.to(device, non_blocking=True)

        def on_device(resident_ng: torch.Tensor = resident_ng) -> torch.Tensor:
            return pipeline(resident_ng, mean_g, std_g)

        def end_to_end(host_ng: torch.Tensor = host_ng) -> torch.Tensor:
            return pipeline(host_ng.to(device, non_blocking=True), mean_g, std_g)

        def on_device_sparse_first(resident_ng: torch.Tensor = resident_ng) -> torch.Tensor:
            return sparse_first_pipeline(resident_ng, mean_g, std_g)

        def end_to_end_sparse_first(host_ng: torch.Tensor = host_ng) -> torch.Tensor:
            return sparse_first_pipeline(host_ng.to(device, non_blocking=True), mean_g, std_g)

        rows = {}
        for label, function in (
            ("transfer", transfer),
            ("device_pipeline", on_device),
            ("end_to_end", end_to_end),
            ("device_pipeline_sparse_first", on_device_sparse_first),
            ("end_to_end_sparse_first", end_to_end_sparse_first),
        ):
            single = timed(function, repeats=3)
            repeats = max(5, int(args.seconds / max(single, 1e-6)))
            seconds = timed(function, repeats=repeats)
            rows[label] = {
                "cells_per_s": batch_size / seconds,
                "ms_per_batch": 1e3 * seconds,
                "fraction_of_one_pass_bound": batch_size / seconds / one_pass_cells_per_s,
            }
            print(
                f"batch {batch_size:>5} {label:>28}: {batch_size / seconds / 1e6:7.2f}M cells/s "
                f"({1e3 * seconds:.3f} ms/batch)"
            )
        rows["stages_ms"] = stage_breakdown(resident_ng, mean_g, std_g, kernels, args.seconds / 4)
        print(f"batch {batch_size:>5} stages (ms): {rows['stages_ms']}")
        report["batches"][str(batch_size)] = rows
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
