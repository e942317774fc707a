"""A 10x Genomics Cell Ranger ``.h5`` matrix (v3 layout: ``matrix/data, indices, indptr, shape,
barcodes, features/id|name|feature_type``) as a row reader, in memory or backed.

Its matrix is stored genes x cells compressed by cell, i.e. cells x genes in CSR: the h5ad row
reader applies as it is (``element="matrix"``). Obs names are the barcodes, var names the feature
names (made unique as ``AnnData.var_names_make_unique`` does: Cell Ranger references repeat some
symbols), var columns ``gene_ids``, ``feature_types`` and the other feature fields, as
``scanpy.read_10x_h5`` gives them.
"""

from __future__ import annotations

import logging
from pathlib import Path

import anndata
import h5py
import numpy as np
import pandas as pd
import scipy.sparse as sp

from enhanced_dm.data.sources import Source, _check_dtype, _file_fingerprint
from enhanced_dm.errors import DataFileError

__all__ = ["is_10x_v3", "open_10x_source"]

logger = logging.getLogger(__name__)

GENE_EXPRESSION = "Gene Expression"
_SKIPPED_FEATURE_FIELDS = ("name", "feature_type", "id", "gene_id", "_all_tag_keys")


def is_10x_v3(file: h5py.File) -> bool:
    """Cell Ranger v3+: a ``matrix`` group with the CSR arrays and a ``features`` group."""
    matrix = file.get("matrix")
    parts = {"barcodes", "data", "indices", "indptr", "shape", "features"}
    return isinstance(matrix, h5py.Group) and parts <= set(matrix.keys())


def _text(dataset: h5py.Dataset) -> np.ndarray:
    return dataset[:].astype(str)


def _var(features: h5py.Group, where: str) -> pd.DataFrame:
    """Features as scanpy reads them: unique names, ``gene_ids``, ``feature_types``, the rest."""
    names = pd.Index(_text(features["name"]))
    columns: dict[str, np.ndarray] = {"gene_ids": _text(features["id"])}
    columns["feature_types"] = _text(features["feature_type"])
    for name, item in features.items():
        if isinstance(item, h5py.Dataset) and name not in _SKIPPED_FEATURE_FIELDS:
            columns[name] = item[:].astype(bool if item.dtype.kind == "b" else str)
    other = sorted({str(kind) for kind in columns["feature_types"]} - {GENE_EXPRESSION})
    if other:
        raise DataFileError(
            f"{where}: holds {other} features beside {GENE_EXPRESSION!r}; read it with "
            "scanpy.read_10x_h5(path, gex_only=True) and pass the AnnData (data=adata)"
        )
    unique = anndata.utils.make_index_unique(names)
    if not unique.equals(names):
        logger.info("%s: repeated feature names made unique (%s)", where, "var_names_make_unique")
    return pd.DataFrame(columns, index=unique)


def open_10x_source(path: Path, *, backed: bool, direct_read: bool = True) -> Source:
    """Open a Cell Ranger v3 ``.h5``: barcodes and features always, the matrix in memory unless
    ``backed`` (then read as an h5ad's CSR X is, with positional reads where possible)."""
    where = f"{path} (matrix)"
    try:
        with h5py.File(path, "r") as file:
            matrix = file["matrix"]
            _check_dtype(matrix["data"].dtype, where)
            n_genes, n_cells = (int(n) for n in matrix["shape"][:])
            obs = pd.DataFrame(index=pd.Index(_text(matrix["barcodes"])))
            var = _var(matrix["features"], where)
            if (len(obs), len(var)) != (n_cells, n_genes):
                raise DataFileError(
                    f"{where}: shape {[n_genes, n_cells]} does not match its {len(var)} features "
                    f"and {len(obs)} barcodes"
                )
            csr = None
            if not backed:
                arrays = (matrix["data"][:], matrix["indices"][:], matrix["indptr"][:])
                csr = sp.csr_matrix(arrays, shape=(n_cells, n_genes))
    except DataFileError:
        raise
    except Exception as error:  # h5py raises many types for damaged files
        raise DataFileError(
            f"{path}: not a readable 10x .h5 matrix ({type(error).__name__}: {error})"
        ) from error
    return Source(
        str(path),
        obs,
        var.index,
        var,
        matrix=csr,
        path=path,
        element="matrix",
        fingerprint=_file_fingerprint(path),
        direct_read=direct_read,
    )
