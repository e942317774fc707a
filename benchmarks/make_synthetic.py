"""Write a synthetic single-cell ``.h5ad`` for the loader benchmarks, in bounded memory.

The counts are gamma-Poisson (negative-binomial) draws, as in scRNA-seq:

.. math::

    \\mu_{cg} = s_c \\, m_g \\, f_{t(c) g}, \\qquad
    x_{cg} = 1 + \\mathrm{Poisson}(\\lambda_{cg}), \\quad
    \\lambda_{cg} \\sim \\mathrm{Gamma}(1/\\phi, \\phi \\, \\mu_{cg})

with per-gene means :math:`m_g` log-normal, a per-cell size factor :math:`s_c` log-normal, and a
per-cell-type fold change :math:`f_{tg}` log-normal on a tenth of the genes. Each cell stores about
``--nnz`` nonzeros (log-normal spread, clipped to [nnz/2, 3 nnz/2]); which genes are detected is a
weighted draw without replacement (weight :math:`m_g^{0.7}`, Gumbel top-k), so highly expressed genes
are detected more often. Stored values are the nonzero counts (``1 +`` the draw), int32, CSR.

obs holds ``cell_type`` (categorical) in contiguous blocks, the way atlases are laid out
(``batch`` blocks, each sorted by cell type), ``batch`` (categorical) and ``time`` (each batch
one time point, 0, 24, 48, ... hours, for the temporal benchmark). The matrix is written
with h5py straight into preallocated datasets, ``--chunk-cells`` rows at a time, so memory stays
bounded (about ``chunk_cells * genes * 4`` bytes for the gene draw) whatever ``--cells`` is.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import anndata
import h5py
import numpy as np
import pandas as pd

DEFAULT_DIRECTORY = Path(__file__).resolve().parent / "data"


def block_layout(
    n_cells: int, n_cell_types: int, n_batches: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Return per-cell ``(cell_type, batch)`` codes laid out in contiguous blocks.

    Cells are grouped by batch, and inside each batch by cell type, with unequal type proportions
    (Dirichlet) as in real atlases.
    """
    batch_sizes = np.diff(np.linspace(0, n_cells, n_batches + 1).round().astype(np.int64))
    type_proportions = rng.dirichlet(np.full(n_cell_types, 1.5))
    cell_type_codes = np.empty(n_cells, dtype=np.int16)
    batch_codes = np.empty(n_cells, dtype=np.int16)
    start = 0
    for batch, batch_size in enumerate(batch_sizes):
        type_counts = rng.multinomial(batch_size, type_proportions)
        order = rng.permutation(n_cell_types)
        codes = np.repeat(order, type_counts[order])
        cell_type_codes[start : start + batch_size] = codes
        batch_codes[start : start + batch_size] = batch
        start += batch_size
    return cell_type_codes, batch_codes


def draw_chunk(
    rng: np.random.Generator,
    nnz_c: np.ndarray,
    cell_type_c: np.ndarray,
    log_weight_g: np.ndarray,
    mean_g: np.ndarray,
    fold_change_tg: np.ndarray,
    dispersion: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Draw the nonzeros of a chunk of cells; return ``(indices, data)`` in CSR row order."""
    n_cells = nnz_c.shape[0]
    n_genes = log_weight_g.shape[0]
    k_max = int(nnz_c.max())
    # Gumbel top-k: the k largest of log(w) + Gumbel noise are a weighted draw without replacement.
    keys_cg = rng.gumbel(size=(n_cells, n_genes)).astype(np.float32)
    keys_cg += log_weight_g
    top_ck = np.argpartition(keys_cg, n_genes - k_max, axis=1)[:, n_genes - k_max :]
    top_keys_ck = np.take_along_axis(keys_cg, top_ck, axis=1)
    del keys_cg
    # Keep each cell's nnz_c best keys, then restore gene order within the row (canonical CSR).
    order_ck = np.argsort(-top_keys_ck, axis=1)
    ranked_ck = np.take_along_axis(top_ck, order_ck, axis=1)
    keep_ck = np.arange(k_max)[None, :] < nnz_c[:, None]
    ranked_ck = np.where(keep_ck, ranked_ck, n_genes)
    ranked_ck.sort(axis=1)
    indices = ranked_ck[ranked_ck < n_genes].astype(np.int32)
    rows = np.repeat(np.arange(n_cells), nnz_c)
    size_factor_c = rng.lognormal(0.0, 0.4, size=n_cells)
    mu = size_factor_c[rows] * mean_g[indices] * fold_change_tg[cell_type_c[rows], indices]
    lam = rng.gamma(1.0 / dispersion, dispersion * mu)
    data = (1 + rng.poisson(lam)).astype(np.int32)
    return indices, data


def write_frame_skeleton(path: Path, obs: pd.DataFrame, var: pd.DataFrame) -> None:
    """Write an ``.h5ad`` with obs/var/uns and no X, via anndata, so the encoding is standard."""
    adata = anndata.AnnData(obs=obs, var=var)
    adata.write_h5ad(path)


def make_synthetic(
    out: Path,
    n_cells: int,
    n_genes: int,
    nnz: int,
    n_cell_types: int = 30,
    n_batches: int = 4,
    chunk_cells: int = 1000,
    dispersion: float = 0.5,
    seed: int = 0,
) -> Path:
    """Write the synthetic dataset to ``out`` and return the path."""
    if not 0 < nnz <= n_genes:
        raise ValueError(f"--nnz must lie in (0, genes={n_genes}], got {nnz}.")
    rng = np.random.default_rng(seed)
    mean_g = rng.lognormal(mean=-2.0, sigma=1.5, size=n_genes)
    log_weight_g = (0.7 * np.log(mean_g)).astype(np.float32)
    fold_change_tg = np.ones((n_cell_types, n_genes))
    marker_g = rng.random((n_cell_types, n_genes)) < 0.1
    fold_change_tg[marker_g] = rng.lognormal(0.0, 1.0, size=int(marker_g.sum()))
    cell_type_codes, batch_codes = block_layout(n_cells, n_cell_types, n_batches, rng)
    nnz_per_cell = np.clip(
        np.rint(nnz * rng.lognormal(0.0, 0.25, size=n_cells)),
        max(1, nnz // 2),
        min(n_genes, (3 * nnz) // 2),
    ).astype(np.int64)
    indptr = np.zeros(n_cells + 1, dtype=np.int64)
    np.cumsum(nnz_per_cell, out=indptr[1:])

    obs = pd.DataFrame(
        {
            "cell_type": pd.Categorical.from_codes(
                cell_type_codes, [f"type_{t:02d}" for t in range(n_cell_types)]
            ),
            "batch": pd.Categorical.from_codes(
                batch_codes, [f"batch_{b}" for b in range(n_batches)]
            ),
            # each library batch is one time point of a time course (hours)
            "time": batch_codes.astype(np.float64) * 24.0,
        },
        index=pd.Index([f"cell_{c:07d}" for c in range(n_cells)]),
    )
    var = pd.DataFrame(index=pd.Index([f"gene_{g:05d}" for g in range(n_genes)]))
    out.parent.mkdir(parents=True, exist_ok=True)
    write_frame_skeleton(out, obs, var)

    total = int(indptr[-1])
    with h5py.File(out, "r+") as file:
        group = file.create_group("X")
        group.attrs["encoding-type"] = "csr_matrix"
        group.attrs["encoding-version"] = "0.1.0"
        group.attrs["shape"] = np.array([n_cells, n_genes], dtype=np.int64)
        group.create_dataset("indptr", data=indptr)
        data_dataset = group.create_dataset("data", shape=(total,), dtype=np.int32)
        indices_dataset = group.create_dataset("indices", shape=(total,), dtype=np.int32)
        started = time.perf_counter()
        for start in range(0, n_cells, chunk_cells):
            stop = min(start + chunk_cells, n_cells)
            indices, data = draw_chunk(
                rng,
                nnz_per_cell[start:stop],
                cell_type_codes[start:stop],
                log_weight_g,
                mean_g,
                fold_change_tg,
                dispersion,
            )
            indices_dataset[indptr[start] : indptr[stop]] = indices
            data_dataset[indptr[start] : indptr[stop]] = data
            if (start // chunk_cells) % 20 == 0:
                elapsed = time.perf_counter() - started
                print(f"  {stop:>9,} / {n_cells:,} cells  ({elapsed:.0f} s)", flush=True)
    return out


def main(argv: list[str] | None = None) -> None:
    """Command line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cells", type=int, default=200_000)
    parser.add_argument("--genes", type=int, default=20_000)
    parser.add_argument("--nnz", type=int, default=2_000, help="mean nonzeros per cell")
    parser.add_argument("--cell-types", type=int, default=30)
    parser.add_argument("--batches", type=int, default=4)
    parser.add_argument("--chunk-cells", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="output path (default: benchmarks/data/synthetic_<cells>x<genes>_<nnz>.h5ad)",
    )
    args = parser.parse_args(argv)
    out = args.out or DEFAULT_DIRECTORY / (f"synthetic_{args.cells}x{args.genes}_{args.nnz}.h5ad")
    started = time.perf_counter()
    make_synthetic(
        out,
        n_cells=args.cells,
        n_genes=args.genes,
        nnz=args.nnz,
        n_cell_types=args.cell_types,
        n_batches=args.batches,
        chunk_cells=args.chunk_cells,
        seed=args.seed,
    )
    size_gib = out.stat().st_size / 2**30
    print(f"wrote {out} ({size_gib:.2f} GiB) in {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
