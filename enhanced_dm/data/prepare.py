"""Optional layout conversion: rewrite an ``.h5ad`` so backed reads can read its matrix directly.

Compressed (gzip, lzf) or otherwise filtered CSR arrays can only be read through HDF5, which
decompresses whole chunks per read. :func:`prepare_h5ad` writes a copy whose ``data`` /
``indices`` / ``indptr`` are contiguous and uncompressed; :class:`~enhanced_dm.data.sources.Source`
then reads rows with positional reads at their byte offsets (see ``benchmarks/`` for both
readers side by side). Files anndata writes with its defaults (chunked, uncompressed) are read
directly already and need no conversion. Everything else (obs, var, uns, obsm, other layers) is copied unchanged,
the cell order is kept, and the copy is an ordinary h5ad that anndata and scanpy read as before.
The source file is only read. Reading plain h5ad stays the default: this step is never required.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

import h5py

from enhanced_dm.data.sources import encoding_type
from enhanced_dm.errors import DataFileError

__all__ = ["prepare_h5ad"]

# Values copied per h5py read/write, so memory stays bounded whatever the file size (~64 MiB).
_COPY_VALUES = 1 << 24
_CSR_ARRAYS = ("indptr", "indices", "data")


def prepare_h5ad(
    source: str | os.PathLike[str],
    target: str | os.PathLike[str],
    *,
    matrices: Sequence[str] = ("X",),
    overwrite: bool = False,
) -> Path:
    """Copy ``source`` to ``target`` with the CSR ``matrices`` (``"X"``, ``"layers/counts"``...)
    stored contiguously and uncompressed; returns ``target``.

    Streams the arrays in pieces of ``_COPY_VALUES`` values (memory does not grow with the file)
    and writes through a temporary file in the target's folder renamed into place at the end,
    so an interrupted run never leaves a half-written ``target``. Raises ``DataFileError`` when
    ``source`` is not an h5ad with those matrices stored as ``csr_matrix``, or when ``target``
    exists and ``overwrite`` is false.
    """
    source, target = Path(source), Path(target)
    if target.exists() and not overwrite:
        raise DataFileError(f"{target}: already exists; pass overwrite=True to replace it")
    if target.resolve() == source.resolve():
        raise DataFileError(f"{target}: is the source file; the source is never modified")
    handle, temporary = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    os.close(handle)
    try:
        with h5py.File(source, "r") as src, h5py.File(temporary, "w") as dst:
            _check_matrices(src, source, matrices)
            dst.attrs.update(dict(src.attrs))
            _copy_tree(src, dst, set(matrices))
        os.replace(temporary, target)
    except OSError as error:
        raise DataFileError(f"{source}: cannot be prepared into {target} ({error})") from error
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)
    return target


def _check_matrices(src: h5py.File, path: Path, matrices: Sequence[str]) -> None:
    for name in matrices:
        node = src.get(name)
        encoding = encoding_type(node) if node is not None else ""
        if node is None or encoding != "csr_matrix":
            found = "missing" if node is None else f"stored as {encoding or type(node).__name__}"
            raise DataFileError(
                f"{path}: {name} is {found}; prepare_h5ad rewrites csr_matrix groups only"
            )


def _copy_tree(src: h5py.Group, dst: h5py.Group, matrices: set[str]) -> None:
    """Copy ``src`` into ``dst``; the groups named in ``matrices`` get contiguous arrays."""
    for key, node in src.items():
        name = node.name.lstrip("/")
        if name in matrices:
            _copy_contiguous(node, dst.create_group(key))
        elif isinstance(node, h5py.Group) and any(m.startswith(name + "/") for m in matrices):
            group = dst.create_group(key)
            group.attrs.update(dict(node.attrs))
            _copy_tree(node, group, matrices)
        else:
            src.copy(node, dst, name=key)


def _copy_contiguous(csr: h5py.Group, out: h5py.Group) -> None:
    """The CSR arrays of ``csr`` as contiguous, unfiltered datasets of ``out`` (same dtypes)."""
    out.attrs.update(dict(csr.attrs))
    for name in _CSR_ARRAYS:
        array = csr[name]
        copy = out.create_dataset(name, shape=array.shape, dtype=array.dtype)
        for start in range(0, array.shape[0], _COPY_VALUES):
            stop = min(start + _COPY_VALUES, array.shape[0])
            copy[start:stop] = array[start:stop]
