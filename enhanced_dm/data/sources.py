"""One h5ad file or AnnData as a row reader: CSR arrays in memory or read from disk with h5py.

Files are only ever opened read-only (``h5py.File(path, "r")`` and ``anndata.read_h5ad(path,
backed="r")``), so enhanced-dm never modifies its inputs. Every way a file can be unusable (absent,
a directory, unreadable, not HDF5, truncated, X missing, X of a type or dtype we cannot read) is
reported here, at open time, as a :class:`~enhanced_dm.errors.DataFileError` naming the file.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anndata
import h5py
import numpy as np
import pandas as pd
import scipy.sparse as sp

from enhanced_dm.errors import DataFileError

__all__ = [
    "DirectRows",
    "HeldRows",
    "RowBlock",
    "Source",
    "ValuesLayout",
    "concat_row_blocks",
    "encoding_type",
    "open_source",
]

# Rows whose byte ranges are closer than this many stored values are read in one h5py call.
_COALESCE_GAP = 32_768
# Backed files: the setup-time value check reads this many evenly spaced spans of stored values.
_SAMPLE_SPANS = 16
# numpy dtype kinds a matrix may hold: bool, signed / unsigned integer, float.
_SUPPORTED_KINDS = "biuf"


@dataclass
class RowBlock:
    """CSR rows read from one source, in the order they were asked for (file gene space)."""

    indptr: np.ndarray
    indices: np.ndarray
    data: np.ndarray


@dataclass
class HeldRows:
    """CSR arrays that hold some rows of a matrix, from which any subset is copied out.

    ``rows`` are the matrix rows held, ascending, and row ``rows[i]`` spans
    ``indptr[i]:indptr[i + 1]`` of ``indices`` / ``data``; ``rows=None`` means every row, row
    ``r`` at position ``r`` (a whole in-memory matrix: nothing is read ahead).
    """

    indptr: np.ndarray
    indices: np.ndarray
    data: np.ndarray
    rows: np.ndarray | None = None

    def take(self, rows: np.ndarray) -> RowBlock:
        """Copy of ``rows`` (matrix row numbers, all held, any order) as a new block."""
        positions = rows if self.rows is None else np.searchsorted(self.rows, rows)
        indptr, firsts, lasts = _plan_rows(self.indptr, positions)
        return RowBlock(
            indptr,
            _copy_ranges(self.indices, firsts, lasts),
            _copy_ranges(self.data, firsts, lasts),
        )


@dataclass
class ValuesLayout:
    """Where a 1-D dataset's values lie in the file: value ``i`` is in chunk ``i // chunk_values``
    at byte ``chunk_offsets[chunk] + (i % chunk_values) * itemsize`` (contiguous storage is one
    chunk holding every value)."""

    dtype: np.dtype
    chunk_values: int
    chunk_offsets: np.ndarray

    @classmethod
    def of(cls, dataset: h5py.Dataset) -> ValuesLayout | None:
        """The layout of ``dataset``, or None when its bytes are not the values as stored: a
        filter (compression, shuffle, checksum), an unallocated or partial chunk, another byte
        order. Chunk offsets come from one pass over the chunk index (``chunk_iter``)."""
        if not dataset.dtype.isnative:
            return None
        if dataset.chunks is None:
            offset = dataset.id.get_offset()
            if offset is None:
                return None
            return cls(dataset.dtype, max(1, dataset.shape[0]), np.array([offset], np.int64))
        if dataset.id.get_create_plist().get_nfilters() or not hasattr(dataset.id, "chunk_iter"):
            return None
        chunk_values = dataset.chunks[0]
        found: list[tuple[int, int, int]] = []
        dataset.id.chunk_iter(
            lambda info: found.append((info.chunk_offset[0], info.byte_offset, info.size))
        )
        table = np.array(sorted(found), dtype=np.int64).reshape(-1, 3)
        expected = np.arange(-(-dataset.shape[0] // chunk_values), dtype=np.int64) * chunk_values
        full_size = chunk_values * dataset.dtype.itemsize
        if not np.array_equal(table[:, 0], expected) or bool((table[:, 2] != full_size).any()):
            return None
        return cls(dataset.dtype, chunk_values, table[:, 1].copy())

    def pieces(self, firsts: np.ndarray, lasts: np.ndarray) -> tuple[list[int], list[int]]:
        """File byte offsets and byte lengths covering value ranges ``[firsts[i], lasts[i])`` in
        order, each range split where it crosses a chunk boundary."""
        keep = lasts > firsts
        firsts, lasts = firsts[keep], lasts[keep]
        first_chunk = firsts // self.chunk_values
        counts = (lasts - 1) // self.chunk_values - first_chunk + 1
        range_of_piece = np.repeat(np.arange(len(firsts)), counts)
        starts_of_ranges = np.cumsum(counts) - counts
        chunk = (
            first_chunk[range_of_piece]
            + np.arange(int(counts.sum()))
            - np.repeat(starts_of_ranges, counts)
        )
        low = np.maximum(firsts[range_of_piece], chunk * self.chunk_values)
        high = np.minimum(lasts[range_of_piece], (chunk + 1) * self.chunk_values)
        size = self.dtype.itemsize
        where = self.chunk_offsets[chunk] + (low - chunk * self.chunk_values) * size
        return where.tolist(), ((high - low) * size).tolist()


class DirectRows:
    """``indices`` / ``data`` of a CSR matrix stored uncompressed in an HDF5 file, read with
    ``os.preadv`` at their byte offsets, straight into the output arrays.

    Works for contiguous storage and for unfiltered chunked storage (anndata's default writer):
    :class:`ValuesLayout` maps values to file bytes. One system call per run of consecutive rows
    (per chunk it crosses) and array, without HDF5's per-call selection machinery; unlike a
    memory map, nothing stays mapped (resident memory does not grow with the part of the file
    read) and a file truncated under us gives a short read, reported as a ``DataFileError``, not
    a crash.
    """

    def __init__(
        self, path: Path, indptr: np.ndarray, layouts: tuple[ValuesLayout, ValuesLayout], where: str
    ) -> None:
        self.path = path
        self.indptr = indptr
        self.layouts = layouts  # indices, then data
        self.where = where
        self._fd = os.open(path, os.O_RDONLY)

    @classmethod
    def open(
        cls, path: Path, group: h5py.Group, indptr: np.ndarray, where: str
    ) -> DirectRows | None:
        """A reader for ``group``'s arrays, or None when they are not readable this way (see
        :meth:`ValuesLayout.of`) or the platform lacks ``os.preadv``."""
        if not hasattr(os, "preadv"):
            return None
        indices, data = ValuesLayout.of(group["indices"]), ValuesLayout.of(group["data"])
        if indices is None or data is None:
            return None
        return cls(path, indptr, (indices, data), where)

    def close(self) -> None:
        os.close(self._fd)

    def take(self, rows: np.ndarray) -> RowBlock:
        """Rows ``rows`` (any order) read from the file as a new block."""
        indptr, firsts, lasts = _plan_rows(self.indptr, rows)
        indices, data = (self._read(layout, firsts, lasts) for layout in self.layouts)
        return RowBlock(indptr, indices, data)

    def _read(self, layout: ValuesLayout, firsts: np.ndarray, lasts: np.ndarray) -> np.ndarray:
        out = np.empty(int((lasts - firsts).sum()), dtype=layout.dtype)
        view, position = out.data.cast("B"), 0
        for where, wanted in zip(*layout.pieces(firsts, lasts), strict=True):
            done = 0
            while done < wanted:
                try:
                    got = os.preadv(
                        self._fd, [view[position + done : position + wanted]], where + done
                    )
                except OSError as error:
                    raise DataFileError(
                        f"{self.where}: reading bytes {where:,}-{where + wanted:,} failed "
                        f"({error.strerror or error})"
                    ) from error
                if got == 0:
                    raise DataFileError(
                        f"{self.where}: the file ends before byte {where + wanted:,}; was it "
                        "truncated or replaced after setup?"
                    )
                done += got
            position += wanted
        return out


class Source:
    """Metadata of one dataset (obs, var) and a row reader for its matrix.

    In memory the CSR arrays are numpy arrays. Backed, only ``indptr`` is loaded. When the file
    stores ``data`` and ``indices`` uncompressed, contiguous or chunked (``direct_read=True``, the
    default), rows are read with positional reads at their byte offsets (:class:`DirectRows`: one
    system call per run of rows, no HDF5 call per read); otherwise with h5py in coalesced
    contiguous spans (compressed or otherwise filtered files). Handles are opened lazily and not
    pickled, so each DataLoader worker opens its own.
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
        direct_read: bool = True,
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
        self.direct_read = direct_read
        self._matrix = matrix
        self._file: h5py.File | None = None
        self._indptr: np.ndarray | None = (
            matrix.indptr.astype(np.int64) if matrix is not None else None
        )
        self._dense = False
        self._direct: DirectRows | None = None
        self._identity = _file_identity(path) if path is not None and matrix is None else None
        self.row_ids: dict[str, np.ndarray] = {}
        """Per row of this dataset, ids that batches carry as ``<name>_n`` (int64; e.g. a SOMA
        experiment's ``soma_joinid``); other datasets of a store give -1."""

    def check_unchanged(self) -> None:
        """Refuse a backed file whose size, mtime or inode changed since setup (overwritten in
        place during a run, its rows would silently be other cells' or garbage)."""
        if self._identity is None or self.path is None:
            return
        try:
            now = _file_identity(self.path)
        except OSError as error:
            raise DataFileError(f"{self.where}: the file is gone since setup ({error})") from error
        if now != self._identity:
            size, mtime_ns, inode = self._identity
            raise DataFileError(
                f"{self.where}: the file changed during the run (size, mtime, inode were "
                f"{(size, mtime_ns, inode)}, now {now}); expected the file read at setup. "
                "Do not overwrite data files that a run reads; set up the DataModule again"
            )

    @property
    def backed(self) -> bool:
        return self._matrix is None

    @property
    def reads_directly(self) -> bool:
        """Whether backed reads use positional reads (known once the file is opened)."""
        self._group()
        return self._direct is not None

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_file"] = None
        state["_direct"] = None
        return state

    def close(self) -> None:
        """Close the file handles if open (they reopen on the next read)."""
        if self._direct is not None:
            self._direct.close()
            self._direct = None
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
            if self.direct_read and self._indptr is not None:
                self._direct = DirectRows.open(self.path, node, self._indptr, self.where)
        return self._file[self.element]

    @property
    def dtype(self) -> np.dtype:
        if self._matrix is not None:
            return self._matrix.dtype
        node = self._group()
        return node.dtype if self._dense else node["data"].dtype

    @property
    def where(self) -> str:
        """``<file> (<element>)``: how messages name the matrix (X or ``layers/<name>``)."""
        return f"{self.name} ({self.element})"

    @property
    def n_stored(self) -> int | None:
        """Number of stored values: non-zeros of a sparse matrix, every entry of a dense one
        (None: not counted, where counting would read the whole dataset)."""
        if self._matrix is not None:
            return int(self._matrix.nnz)
        node = self._group()
        return int(node.size) if self._dense else int(node["data"].shape[0])

    def read_rows(self, rows: np.ndarray) -> RowBlock:
        """CSR rows ``rows``, in the order given."""
        rows = np.asarray(rows, dtype=np.int64)
        return self.hold_rows(np.unique(rows)).take(rows)

    def hold_rows(self, rows: np.ndarray) -> HeldRows | DirectRows:
        """Make ``rows`` (ascending, unique) available to ``take``.

        In memory this reads nothing (the whole matrix is held), and direct reads happen in
        ``take``; otherwise the rows are read from disk once, so the batches of one shuffle pool
        share one read. A failing disk read is a ``DataFileError`` naming the file and the rows.
        """
        if self._matrix is not None:
            assert self._indptr is not None
            return HeldRows(self._indptr, self._matrix.indices, self._matrix.data)
        self.check_unchanged()
        try:
            node = self._group()
            if self._direct is not None:
                return self._direct
            if self._dense:
                block = _dense_rows(node, rows)
                return HeldRows(block.indptr, block.indices, block.data, rows)
            assert self._indptr is not None
            return _read_spans(self._indptr, node["indices"], node["data"], rows)
        except (OSError, KeyError, ValueError) as error:
            first = rows[:3].tolist()
            raise DataFileError(
                f"{self.where}: reading rows {first}... failed ({type(error).__name__}: {error}); "
                "was the file changed or damaged after setup?"
            ) from error

    def sample_values(self, max_values: int = 200_000) -> np.ndarray:
        """Up to ``max_values`` stored values for the setup-time input check.

        In memory: every stored value when there are at most ``max_values``, else the first
        ``max_values`` (use :meth:`values_to_check`, which returns all of them). Backed: every
        value when they fit, else ``_SAMPLE_SPANS`` evenly spaced contiguous spans (beginning,
        middle and end of the file, one h5py read each), so a file that is only bad at its end
        is not judged by its first rows alone.
        """
        if self._matrix is not None:
            return self._matrix.data[:max_values]
        node = self._group()
        if self._dense:
            n_rows = max(1, min(self.n_obs, max_values // max(1, self.n_vars)))
            starts = _span_starts(self.n_obs, n_rows, _SAMPLE_SPANS)
            per_span = max(1, n_rows // len(starts))
            parts = [np.asarray(node[s : s + per_span]).ravel() for s in starts]
            return np.concatenate(parts) if parts else np.zeros(0, node.dtype)
        data = node["data"]
        total = int(data.shape[0])
        if total <= max_values:
            return data[:]
        starts = _span_starts(total, max_values, _SAMPLE_SPANS)
        per_span = max(1, max_values // len(starts))
        return np.concatenate([data[s : s + per_span] for s in starts])

    def structure_to_check(self, max_rows: int) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
        """``(indptr, indices, rows)`` for the setup-time check that no row stores a gene twice.

        In memory: every row (the held arrays, no copy). Backed: the column indices alone of
        ``_SAMPLE_SPANS`` evenly spaced spans of rows, about ``max_rows`` in all (one h5py read
        per span). None for a dense matrix or a backed one without rows (nothing to repeat).
        """
        if self._matrix is not None:
            assert self._indptr is not None
            return self._indptr, self._matrix.indices, np.arange(self.n_obs)
        node = self._group()
        if self._dense or self.n_obs == 0:
            return None
        assert self._indptr is not None
        starts = _span_starts(self.n_obs, max_rows, _SAMPLE_SPANS)
        per_span = max(1, max_rows // max(1, len(starts)))
        rows = np.unique(
            np.concatenate([np.arange(a, min(a + per_span, self.n_obs)) for a in starts])
        )
        indptr, firsts, lasts = _plan_rows(self._indptr, rows)
        pairs = zip(firsts.tolist(), lasts.tolist(), strict=True)
        indices = np.concatenate([node["indices"][low:high] for low, high in pairs])
        return indptr, indices, rows

    def values_to_check(self, max_values: int) -> tuple[np.ndarray, bool]:
        """The values the setup-time check looks at, and whether they are ALL the stored values.

        An in-memory matrix is checked whole (one vectorized pass over its non-zeros). A backed
        file is checked whole when it stores at most ``max_values`` values, else sampled
        (:meth:`sample_values`); the store then checks the remaining rows as it reads them.
        """
        if self._matrix is not None:
            return self._matrix.data, True
        values = np.asarray(self.sample_values(max_values))
        stored = self.n_stored
        return values, stored is not None and values.size >= stored


def _span_starts(total: int, wanted: int, n_spans: int) -> list[int]:
    """Starts of ``n_spans`` evenly spaced spans of ``wanted // n_spans`` items in ``total``."""
    if total <= 0:
        return []
    per_span = max(1, wanted // n_spans)
    last_start = max(0, total - per_span)
    return sorted({int(x) for x in np.linspace(0, last_start, num=min(n_spans, total))})


def concat_row_blocks(blocks: list[RowBlock]) -> RowBlock:
    """Rows of several blocks (each ``indptr`` starting at 0) as one block, in order."""
    if len(blocks) == 1:
        return blocks[0]
    offsets = np.cumsum([0] + [len(block.data) for block in blocks])
    indptr = np.concatenate(
        [np.zeros(1, np.int64)]
        + [block.indptr[1:] + offset for block, offset in zip(blocks, offsets, strict=False)]
    )
    return RowBlock(
        indptr,
        np.concatenate([block.indices for block in blocks]),
        np.concatenate([block.data for block in blocks]),
    )


def _plan_rows(
    indptr: np.ndarray, positions: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """How to copy rows ``positions`` of a CSR layout into a new block: the block's ``indptr``,
    and the value ranges ``[firsts[i], lasts[i])`` to copy in order (runs of touching rows
    merged, so a run of consecutive rows is one range)."""
    starts, ends = indptr[positions], indptr[positions + 1]
    out_indptr = np.zeros(len(positions) + 1, dtype=np.int64)
    np.cumsum(ends - starts, out=out_indptr[1:])
    if len(starts) == 0:
        return out_indptr, starts, ends
    breaks = np.flatnonzero(starts[1:] != ends[:-1]) + 1
    firsts = starts[np.concatenate(([0], breaks))]
    lasts = ends[np.concatenate((breaks - 1, [len(ends) - 1]))]
    return out_indptr, firsts, lasts


def _copy_ranges(array: np.ndarray, firsts: np.ndarray, lasts: np.ndarray) -> np.ndarray:
    """``array[firsts[i]:lasts[i]]`` for every i, concatenated into a new array (each slice is a
    view; the single ``concatenate`` is the only copy)."""
    if len(firsts) == 0:
        return array[:0].copy()
    pairs = zip(firsts.tolist(), lasts.tolist(), strict=True)
    return np.concatenate([array[low:high] for low, high in pairs])


RangeReader = Callable[[list[int], list[int]], tuple[list[np.ndarray], list[np.ndarray]]]
"""Reads value ranges ``[lows[i], highs[i])`` of ``indices`` and ``data`` all at once (e.g.
concurrently): ``(indices parts, data parts)`` in order."""


def _read_spans(
    indptr: np.ndarray,
    indices: Any,
    data: Any,
    rows: np.ndarray,
    gap: int = 0,
    read_ranges: RangeReader | None = None,
) -> HeldRows:
    """Read ``rows`` (ascending) from disk in contiguous spans, one slice of ``indices`` and of
    ``data`` (h5py datasets or zarr arrays) per span.

    Rows closer than ``max(_COALESCE_GAP, gap)`` stored values share a span (scDataset's
    fetch-factor idea: few large reads instead of many small ones); the rows in between are read
    too and held, so the result holds every row from each span's first to its last. With
    ``gap`` one chunk of a chunked array, spans are more than a chunk apart, so no chunk is read
    by two spans. ``read_ranges`` reads every span in one call (zarr: concurrently).
    """
    if len(rows) == 0:
        return HeldRows(np.zeros(1, np.int64), indices[:0], data[:0], rows)
    starts, ends = indptr[rows], indptr[rows + 1]
    breaks = np.flatnonzero(starts[1:] - ends[:-1] > max(_COALESCE_GAP, gap)) + 1
    first_rows = rows[np.concatenate(([0], breaks))]
    last_rows = rows[np.concatenate((breaks - 1, [len(rows) - 1]))]
    lows, highs = indptr[first_rows], indptr[last_rows + 1]
    offsets = np.concatenate(([0], np.cumsum(highs - lows)))
    out_indices = np.empty(int(offsets[-1]), dtype=indices.dtype)
    out_data = np.empty(int(offsets[-1]), dtype=data.dtype)
    held_rows, held_indptr = [], []
    if read_ranges is not None:
        index_parts, data_parts = read_ranges(lows.tolist(), highs.tolist())
        np.concatenate(index_parts, out=out_indices)
        np.concatenate(data_parts, out=out_data)
    for first, last, low, high, offset in zip(
        first_rows.tolist(),
        last_rows.tolist(),
        lows.tolist(),
        highs.tolist(),
        offsets[:-1].tolist(),
        strict=True,
    ):
        if high > low and read_ranges is None:  # plain slices: h5py's fast path
            out_indices[offset : offset + high - low] = indices[low:high]
            out_data[offset : offset + high - low] = data[low:high]
        held_rows.append(np.arange(first, last + 1))
        held_indptr.append(indptr[first : last + 1] - low + offset)
    held_indptr.append(offsets[-1:])
    return HeldRows(np.concatenate(held_indptr), out_indices, out_data, np.concatenate(held_rows))


def _dense_rows(node: h5py.Dataset, rows: np.ndarray) -> RowBlock:
    """Rows of a dense on-disk X, read as one span and converted to CSR."""
    lo, hi = int(rows.min()), int(rows.max()) + 1
    block = np.asarray(node[lo:hi])[rows - lo]
    matrix = sp.csr_matrix(block)
    return RowBlock(matrix.indptr.astype(np.int64), matrix.indices, matrix.data)


def _file_identity(path: Path) -> tuple[int, int, int]:
    """(size, mtime in ns, inode): what changes when a file is rewritten or replaced."""
    stat = path.stat()
    return stat.st_size, stat.st_mtime_ns, stat.st_ino


def _file_fingerprint(path: Path) -> str:
    stat = path.stat()
    return f"{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}"


def _matrix_fingerprint(matrix: sp.csr_matrix) -> str:
    digest = hashlib.blake2b(digest_size=16)
    for array in (matrix.indptr, matrix.indices, matrix.data):
        digest.update(np.ascontiguousarray(array).tobytes())
    return f"{matrix.shape}:{digest.hexdigest()}"


def _check_dtype(dtype: np.dtype, where: str) -> None:
    """Refuse matrices of strings, objects or complex numbers before anything reads them."""
    if np.dtype(dtype).kind not in _SUPPORTED_KINDS:
        raise DataFileError(
            f"{where}: the matrix has unsupported dtype {np.dtype(dtype)}; expected integer "
            "counts or floating-point expression values"
        )


def _as_csr(matrix: Any, where: str) -> sp.csr_matrix:
    """A CSR copy (or the object itself) of an in-memory matrix; other types are refused."""
    if matrix is None:
        raise DataFileError(f"{where}: the matrix is missing (X is None)")
    if isinstance(matrix, np.ndarray) or sp.issparse(matrix):
        _check_dtype(matrix.dtype, where)
        return sp.csr_matrix(matrix)
    raise DataFileError(
        f"{where}: the matrix has unsupported type {type(matrix).__name__}; "
        "expected a numpy array or a scipy sparse matrix"
    )


def encoding_type(node: Any) -> str:
    """An h5ad element's ``encoding-type`` attribute as text (``""`` when absent)."""
    encoding = node.attrs.get("encoding-type", "")
    return encoding.decode() if isinstance(encoding, bytes) else str(encoding)


def _matrix_element(path: Path, layer: str | None, backed: bool) -> str:
    """The h5 path of X or the layer, checked to exist, to be a matrix and to hold numbers.

    Backed reading needs CSR (row-contiguous) or dense storage; in memory, CSC is converted.
    """
    element = "X" if layer is None else f"layers/{layer}"
    with h5py.File(path, "r") as file:
        if element not in file and _is_10x_h5(file):
            raise DataFileError(
                f"{path}: a 10x Genomics Cell Ranger .h5 matrix of the v2 layout (one group per "
                "genome; v3 files, with a matrix/ group, are read directly) or a layer= was "
                "asked of it; read it with scanpy.read_10x_h5(path) and pass the AnnData "
                "(data=adata), or write it as .h5ad first (adata.write_h5ad(...))"
            )
        if element not in file:
            available = list(file["layers"].keys()) if "layers" in file else []
            what = "X" if layer is None else f"layer {layer!r}"
            raise DataFileError(f"{path}: {what} is missing (layers present: {available})")
        node = file[element]
        where = f"{path} ({element})"
        if isinstance(node, h5py.Group):
            check_sparse_group(encoding_type(node), node.get("data"), where, backed)
        elif isinstance(node, h5py.Dataset):
            check_dense_array(node, where)
    return element


def check_sparse_group(encoding: str | None, data: Any, where: str, backed: bool) -> None:
    """An X / layer group (h5py or zarr) must be CSR, or CSC when read into memory, with a
    ``data`` array of numbers (``data`` None: the group has none)."""
    if encoding not in ("csr_matrix", "csc_matrix") or data is None:
        raise DataFileError(
            f"{where}: stored as {encoding or 'an unknown group'}; expected a csr_matrix, "
            "csc_matrix or dense array"
        )
    if encoding == "csc_matrix" and backed:
        raise DataFileError(
            f"{where}: stored as csc_matrix; backed reading needs csr_matrix rows "
            "(convert with adata.X = adata.X.tocsr() and write again, or use backed=False)"
        )
    _check_dtype(data.dtype, where)


def check_dense_array(array: Any, where: str) -> None:
    """A dense X / layer array (h5py or zarr) must be 2-d and hold numbers."""
    if array.ndim != 2:
        raise DataFileError(f"{where}: expected a 2-d matrix, found shape {array.shape}")
    _check_dtype(array.dtype, where)


def _holds_10x_v3(path: Path) -> bool:
    """Whether ``path`` is a Cell Ranger v3 ``.h5`` (no X; unreadable files: False, the h5ad
    checks then say why)."""
    from enhanced_dm.data.tenx_source import is_10x_v3

    try:
        with h5py.File(path, "r") as file:
            return "X" not in file and is_10x_v3(file)
    except Exception:
        return False


def _is_10x_h5(file: h5py.File) -> bool:
    """Cell Ranger's layout: ``matrix/`` (v3+) or one group per genome (v2), each holding
    ``barcodes``, ``data``, ``indices``, ``indptr`` and ``shape``."""
    parts = {"barcodes", "data", "indices", "indptr", "shape"}
    return any(
        isinstance(group, h5py.Group) and parts <= set(group.keys()) for group in file.values()
    )


def _check_path(path: Path) -> None:
    """The path exists, is a regular file and can be opened for reading."""
    if not path.exists():
        raise DataFileError(f"{path}: data file not found")
    if not path.is_file():
        raise DataFileError(
            f"{path}: is a directory but not a zarr store, or a special file; expected an "
            ".h5ad file or a zarr AnnData store"
        )
    try:
        with open(path, "rb"):
            pass
    except OSError as error:
        raise DataFileError(f"{path}: cannot be read ({error.strerror or error})") from error


def open_source(
    data: str | os.PathLike[str] | anndata.AnnData | Any,
    *,
    backed: bool,
    layer: str | None,
    index: int,
    direct_read: bool = True,
) -> Source:
    """Open one dataset: metadata always, the matrix in memory unless ``backed`` (then read
    with positional reads where the file allows and ``direct_read``, see :class:`Source`).

    ``data``: an AnnData, an h5ad file, a zarr AnnData store, a 10x Cell Ranger v3 ``.h5``, or
    a :class:`~enhanced_dm.data.soma_source.SomaSource` (``layer`` is its own field there)."""
    from enhanced_dm.data.soma_source import SomaSource, open_soma_source

    if isinstance(data, SomaSource):
        return open_soma_source(data, backed=backed)
    if isinstance(data, anndata.AnnData):
        name = f"<AnnData #{index}>"
        element = "X" if layer is None else f"layers/{layer}"
        if layer is not None and layer not in data.layers:
            raise DataFileError(f"{name}: layer {layer!r} is missing (layers: {list(data.layers)})")
        matrix = data.X if layer is None else data.layers[layer]
        csr = _as_csr(matrix, f"{name} ({element})")
        return Source(
            name,
            data.obs,
            data.var_names,
            data.var,
            matrix=csr,
            element=element,
            fingerprint=_matrix_fingerprint(csr),
        )
    path = Path(data)
    if path.is_dir():
        from enhanced_dm.data.zarr_source import is_zarr_store, open_zarr_source

        if is_zarr_store(path):
            return open_zarr_source(path, backed=backed, layer=layer)
    _check_path(path)
    if layer is None and _holds_10x_v3(path):
        from enhanced_dm.data.tenx_source import open_10x_source

        return open_10x_source(path, backed=backed, direct_read=direct_read)
    try:
        element = _matrix_element(path, layer, backed)
        adata = anndata.read_h5ad(path, backed="r")
    except DataFileError:
        raise
    except Exception as error:  # h5py / anndata raise many types for damaged files
        raise DataFileError(
            f"{path}: not a readable h5ad file ({type(error).__name__}: {error})"
        ) from error
    try:
        obs, var_names, var = adata.obs.copy(), adata.var_names.copy(), adata.var.copy()
    finally:
        adata.file.close()
    matrix = None
    if not backed:
        try:
            full = anndata.read_h5ad(path)
        except Exception as error:
            raise DataFileError(
                f"{path}: not a readable h5ad file ({type(error).__name__}: {error})"
            ) from error
        matrix = _as_csr(full.X if layer is None else full.layers[layer], f"{path} ({element})")
    return Source(
        str(path),
        obs,
        var_names,
        var,
        matrix=matrix,
        path=path,
        element=element,
        fingerprint=_file_fingerprint(path),
        direct_read=direct_read,
    )
