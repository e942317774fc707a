"""One h5ad file or AnnData as a row reader: CSR arrays in memory or read from disk with h5py."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anndata
import h5py
import numpy as np
import pandas as pd
import scipy.sparse as sp

from enhanced_dm.errors import DataFileError

__all__ = ["RowBlock", "Source", "open_source"]

# Rows whose byte ranges are closer than this many stored values are read in one h5py call.
_COALESCE_GAP = 32_768


@dataclass
class RowBlock:
    """CSR rows read from one source, in the order they were asked for (file gene space)."""

    indptr: np.ndarray
    indices: np.ndarray
    data: np.ndarray


class Source:
    """Metadata of one dataset (obs, var) and a row reader for its matrix.

    In memory the CSR arrays are numpy arrays; backed, only ``indptr`` is loaded and ``data`` /
    ``indices`` are read with h5py in coalesced contiguous spans. The h5py file is opened lazily
    and not pickled, so each DataLoader worker opens its own handle.
    """

    def __init__(
        self,
        name: str,
        obs: pd.DataFrame,
        var_names: pd.Index,
        var: pd.DataFrame,
        *,
        matrix: sp.csr_matrix | None = None,
        path: Path | None = None,
        element: str = "X",
        fingerprint: str = "",
    ) -> None:
        self.name = name
        self.obs = obs
        self.var_names = var_names
        self.var = var
        self.n_obs = len(obs)
        self.n_vars = len(var_names)
        self.path = path
        self.element = element
        self.fingerprint = fingerprint
        self._matrix = matrix
        self._file: h5py.File | None = None
        self._indptr: np.ndarray | None = (
            matrix.indptr.astype(np.int64) if matrix is not None else None
        )
        self._dense = False

    @property
    def backed(self) -> bool:
        return self._matrix is None

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_file"] = None
        return state

    def close(self) -> None:
        """Close the h5py handle if one is open (it reopens on the next read)."""
        if self._file is not None:
            self._file.close()
            self._file = None

    def _group(self) -> Any:
        if self._file is None:
            assert self.path is not None
            self._file = h5py.File(self.path, "r")
            node = self._file[self.element]
            self._dense = isinstance(node, h5py.Dataset)
            if self._indptr is None and not self._dense:
                self._indptr = node["indptr"][:].astype(np.int64)
        return self._file[self.element]

    @property
    def dtype(self) -> np.dtype:
        if self._matrix is not None:
            return self._matrix.dtype
        node = self._group()
        return node.dtype if self._dense else node["data"].dtype

    def read_rows(self, rows: np.ndarray) -> RowBlock:
        """CSR rows ``rows`` (sorted ascending for best speed; any order is honoured)."""
        rows = np.asarray(rows, dtype=np.int64)
        if self._matrix is not None:
            return _gather_rows(self._matrix.indptr, self._matrix.indices, self._matrix.data, rows)
        node = self._group()
        if self._dense:
            return _dense_rows(node, rows)
        assert self._indptr is not None
        return _read_backed_rows(self._indptr, node["indices"], node["data"], rows)

    def sample_values(self, max_values: int = 200_000) -> np.ndarray:
        """Stored values of the first rows (up to ``max_values``) for input checks."""
        if self._matrix is not None:
            return self._matrix.data[:max_values]
        node = self._group()
        if self._dense:
            n_rows = max(1, min(self.n_obs, max_values // max(1, self.n_vars)))
            return np.asarray(node[:n_rows]).ravel()
        return node["data"][:max_values]


def _gather_rows(
    indptr: np.ndarray, indices: np.ndarray, data: np.ndarray, rows: np.ndarray
) -> RowBlock:
    """Vectorized CSR row gather from in-memory arrays."""
    starts = indptr[rows].astype(np.int64)
    return _gather_ranges(starts, indptr[rows + 1].astype(np.int64) - starts, indices, data)


def _gather_ranges(
    starts: np.ndarray, lengths: np.ndarray, indices: np.ndarray, data: np.ndarray
) -> RowBlock:
    """Rows given as (start, length) ranges of ``indices``/``data``, gathered without a loop."""
    out_indptr = np.zeros(len(starts) + 1, dtype=np.int64)
    np.cumsum(lengths, out=out_indptr[1:])
    positions = np.repeat(starts - out_indptr[:-1], lengths) + np.arange(out_indptr[-1])
    return RowBlock(out_indptr, indices[positions], data[positions])


def _read_backed_rows(
    indptr: np.ndarray, indices: h5py.Dataset, data: h5py.Dataset, rows: np.ndarray
) -> RowBlock:
    """Read rows from disk: rows close together are merged into spans, one h5py read per span.

    Merging (scDataset's fetch-factor idea) turns many small random reads into few large ones.
    """
    if len(rows) == 0:
        return RowBlock(np.zeros(1, np.int64), np.zeros(0, indices.dtype), np.zeros(0, data.dtype))
    order = np.argsort(rows, kind="stable")
    starts = indptr[rows[order]]
    ends = indptr[rows[order] + 1]
    breaks = np.flatnonzero(starts[1:] - ends[:-1] > _COALESCE_GAP) + 1
    span_first = np.concatenate([[0], breaks])
    span_last = np.concatenate([breaks, [len(rows)]]) - 1
    buffer_starts = np.empty_like(starts)
    chunks_indices, chunks_data, offset = [], [], 0
    for first, last in zip(span_first, span_last, strict=True):
        low, high = int(starts[first]), int(ends[first : last + 1].max())
        chunks_indices.append(indices[low:high])
        chunks_data.append(data[low:high])
        buffer_starts[first : last + 1] = starts[first : last + 1] - low + offset
        offset += high - low
    row_starts = np.empty_like(buffer_starts)
    row_starts[order] = buffer_starts
    return _gather_ranges(
        row_starts,
        indptr[rows + 1] - indptr[rows],
        np.concatenate(chunks_indices),
        np.concatenate(chunks_data),
    )


def _dense_rows(node: h5py.Dataset, rows: np.ndarray) -> RowBlock:
    """Rows of a dense on-disk X, read as one span and converted to CSR."""
    lo, hi = int(rows.min()), int(rows.max()) + 1
    block = np.asarray(node[lo:hi])[rows - lo]
    matrix = sp.csr_matrix(block)
    return RowBlock(matrix.indptr.astype(np.int64), matrix.indices, matrix.data)


def _file_fingerprint(path: Path) -> str:
    stat = path.stat()
    return f"{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}"


def _matrix_fingerprint(matrix: sp.csr_matrix) -> str:
    digest = hashlib.blake2b(digest_size=16)
    for array in (matrix.indptr, matrix.indices, matrix.data):
        digest.update(np.ascontiguousarray(array).view(np.uint8))
    return f"{matrix.shape}:{digest.hexdigest()}"


def _as_csr(matrix: Any, name: str) -> sp.csr_matrix:
    if isinstance(matrix, np.ndarray):
        return sp.csr_matrix(matrix)
    if sp.issparse(matrix):
        return sp.csr_matrix(matrix)
    raise DataFileError(
        f"{name}: X has unsupported type {type(matrix).__name__}; "
        "expected a numpy array or a scipy sparse matrix"
    )


def _matrix_element(path: Path, layer: str | None) -> str:
    """The h5 path of X or the layer, checked to exist and be row-readable."""
    element = "X" if layer is None else f"layers/{layer}"
    with h5py.File(path, "r") as file:
        if element not in file:
            available = list(file["layers"].keys()) if "layers" in file else []
            what = "X" if layer is None else f"layer {layer!r}"
            raise DataFileError(f"{path}: {what} is missing (layers present: {available})")
        node = file[element]
        if isinstance(node, h5py.Group):
            encoding = node.attrs.get("encoding-type", "")
            if isinstance(encoding, bytes):
                encoding = encoding.decode()
            if encoding != "csr_matrix":
                raise DataFileError(
                    f"{path}: {element} is stored as {encoding or 'an unknown group'}; backed "
                    "reading needs csr_matrix rows (convert with adata.X = adata.X.tocsr() and "
                    "write again, or use backed=False)"
                )
    return element


def open_source(
    data: str | os.PathLike[str] | anndata.AnnData, *, backed: bool, layer: str | None, index: int
) -> Source:
    """Open one dataset: metadata always, the matrix in memory unless ``backed``."""
    if isinstance(data, anndata.AnnData):
        name = f"<AnnData #{index}>"
        matrix = data.X if layer is None else data.layers.get(layer)
        if matrix is None:
            raise DataFileError(f"{name}: layer {layer!r} is missing (layers: {list(data.layers)})")
        csr = _as_csr(matrix, name)
        return Source(
            name,
            data.obs,
            data.var_names,
            data.var,
            matrix=csr,
            fingerprint=_matrix_fingerprint(csr),
        )
    path = Path(data)
    if not path.is_file():
        raise DataFileError(f"{path}: data file not found")
    try:
        element = _matrix_element(path, layer)
        adata = anndata.read_h5ad(path, backed="r")
    except DataFileError:
        raise
    except (OSError, KeyError, ValueError) as error:
        raise DataFileError(f"{path}: not a readable h5ad file ({error})") from error
    try:
        obs, var_names, var = adata.obs.copy(), adata.var_names.copy(), adata.var.copy()
    finally:
        adata.file.close()
    matrix = None
    if not backed:
        full = anndata.read_h5ad(path)
        matrix = _as_csr(full.X if layer is None else full.layers[layer], str(path))
    return Source(
        str(path),
        obs,
        var_names,
        var,
        matrix=matrix,
        path=path,
        element=element,
        fingerprint=_file_fingerprint(path),
    )
