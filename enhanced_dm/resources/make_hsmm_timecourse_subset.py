"""Rebuild ``hsmm_myoblast_timecourse_1000genes.h5ad``: the HSMM myoblast time course (271 cells,
FPKM) on its 1,000 most variable genes, small enough to ship in the wheel.

Run from the repository root (it reads the shared real-data folder, never the network)::

    python enhanced_dm/resources/make_hsmm_timecourse_subset.py \
        ../shared/data/singlecell/hsmm_myoblast_timecourse_fpkm.h5ad \
        enhanced_dm/resources/hsmm_myoblast_timecourse_1000genes.h5ad

Genes: detected (FPKM > 0) in at least 10 cells, then the 1,000 with the largest variance of
``log1p(FPKM)`` over all cells (ties by file order), kept in file order. Values, obs, var and uns
(provenance) are copied unchanged (X as float32 CSR); the file is written gzip-compressed.
"""

from __future__ import annotations

import sys

import anndata
import numpy as np
import scipy.sparse as sp

N_GENES = 1000
MIN_CELLS = 10


def main(source: str, out: str) -> None:
    adata = anndata.read_h5ad(source)
    x = sp.csr_matrix(adata.X, dtype=np.float64)
    detected = np.asarray((x > 0).sum(0)).ravel() >= MIN_CELLS
    logged = x.copy()
    logged.data = np.log1p(logged.data)
    mean = np.asarray(logged.mean(0)).ravel()
    variance = np.asarray(logged.multiply(logged).mean(0)).ravel() - mean**2
    variance[~detected] = -np.inf
    keep = np.sort(np.argsort(-variance, kind="stable")[:N_GENES])
    subset = adata[:, keep].copy()
    subset.X = sp.csr_matrix(subset.X, dtype=np.float32)
    subset.write_h5ad(out, compression="gzip")
    print(f"{out}: {subset.n_obs} cells x {subset.n_vars} genes")


if __name__ == "__main__":
    main(*sys.argv[1:3])
