"""Small h5py helpers shared by the adapters: the CSR layout and the obs codes of an ``.h5ad``."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import scipy.sparse as sp


@dataclass
class CsrFile:
    """An open ``.h5ad`` whose ``X`` is CSR: the datasets, ``indptr`` in memory, and the shape."""

    file: h5py.File
    data: h5py.Dataset
    indices: h5py.Dataset
    indptr: np.ndarray
    n_cells: int
    n_genes: int

    @classmethod
    def open(cls, path: Path) -> CsrFile:
        """Open ``path`` read-only; raise ``ValueError`` when X is not a CSR group."""
        file = h5py.File(path, "r")
        group = file["X"]
        if not isinstance(group, h5py.Group) or group.attrs.get("encoding-type") != "csr_matrix":
            file.close()
            raise ValueError(f"{path}: X must be a CSR matrix group for the h5py readers.")
        n_cells, n_genes = (int(size) for size in group.attrs["shape"])
        return cls(file, group["data"], group["indices"], group["indptr"][:], n_cells, n_genes)

    def read_rows(self, start: int, stop: int) -> sp.csr_matrix:
        """Rows ``[start, stop)`` as one contiguous read of data and indices."""
        low, high = int(self.indptr[start]), int(self.indptr[stop])
        return sp.csr_matrix(
            (self.data[low:high], self.indices[low:high], self.indptr[start : stop + 1] - low),
            shape=(stop - start, self.n_genes),
        )


def read_obs_codes(path: Path, key: str) -> np.ndarray:
    """Integer codes of obs column ``key`` (categorical codes, or factorized values)."""
    with h5py.File(path, "r") as file:
        element = file["obs"][key]
        if isinstance(element, h5py.Group) and "codes" in element:
            return element["codes"][:].astype(np.int64)
    import anndata

    with h5py.File(path, "r") as file:
        values = anndata.io.read_elem(file["obs"][key])
    _, codes = np.unique(np.asarray(values), return_inverse=True)
    return codes.astype(np.int64)


def slice_csr(chunk: sp.csr_matrix, start: int, stop: int) -> sp.csr_matrix:
    """Rows ``[start, stop)`` of an in-memory CSR chunk as views (no copy of data or indices)."""
    low, high = chunk.indptr[start], chunk.indptr[stop]
    return sp.csr_matrix(
        (chunk.data[low:high], chunk.indices[low:high], chunk.indptr[start : stop + 1] - low),
        shape=(stop - start, chunk.shape[1]),
    )
