"""Real demo data, rebuilt at run time from files that installed packages ship (no download).

``pbmc68k()`` is the default ``data`` of the ``enhanced-dm`` command; ``h5ad_files(path)`` is what
``data=path data.path=...`` gives instead. ``bundled_path(name)`` finds the
small annotation files shipped inside this package (their sources and licences are listed in
``enhanced_dm/resources/MANIFEST.md``).
"""

from __future__ import annotations

import importlib.util
import warnings
from collections.abc import Sequence
from pathlib import Path

import anndata
import numpy as np
import pandas as pd
import scipy.sparse as sp

from enhanced_dm.errors import DataFileError

__all__ = ["bundled_path", "h5ad_files", "hsmm_timecourse", "pbmc68k"]

RESOURCES_DIR = Path(__file__).resolve().parent / "resources"

_PBMC68K_FILE = "10x_pbmc68k_reduced.h5ad"
_PBMC68K_PROVENANCE = (
    "counts = round(expm1(raw.X) * n_counts / 1e4) from scanpy 1.11.5 "
    "datasets/10x_pbmc68k_reduced.h5ad (raw.X is log1p(CP10k) of the 765 genes kept; "
    "n_counts = original per-cell total)"
)
# Obs columns kept, in order, as (new name, column of the scanpy file).
_PBMC68K_OBS = (
    ("cell_type", "bulk_labels"),
    ("louvain", "louvain"),
    ("phase", "phase"),
    ("S_score", "S_score"),
    ("G2M_score", "G2M_score"),
    ("total_counts_all_genes_original", "n_counts"),
    ("n_genes", "n_genes"),
    ("percent_mito", "percent_mito"),
)


def _scanpy_datasets_dir() -> Path:
    """Folder of the data files inside the installed scanpy package (found without importing it)."""
    spec = importlib.util.find_spec("scanpy")
    if spec is None or spec.origin is None:
        raise DataFileError("pbmc68k() needs the scanpy package installed (pip install scanpy)")
    return Path(spec.origin).resolve().parent / "datasets"


def pbmc68k() -> anndata.AnnData:
    """The 700 PBMCs x 765 genes of scanpy's ``pbmc68k_reduced``, as int32 UMI counts.

    scanpy ships these cells only as ``raw.X = log1p(CP10k)`` of the 765 genes kept and the original
    library size ``obs["n_counts"]`` (over ALL genes), so the counts are recovered exactly by

    .. math::

        \\text{counts}_{ng} = \\operatorname{round}\\bigl(\\operatorname{expm1}(\\text{raw.X}_{ng})
        \\cdot \\text{n\\_counts}_n / 10^4\\bigr)

    (largest rounding residual 0.08). The result equals ``../shared/data/singlecell/
    pbmc68k_reduced_counts.h5ad``. ``obs`` holds ``cell_type`` (the 10 FACS-sorted PBMC types,
    scanpy's ``bulk_labels``), ``louvain``, ``phase``, ``S_score``, ``G2M_score``,
    ``total_counts_all_genes_original`` (scanpy's ``n_counts``: the library size to give as
    ``total_counts_key``), ``n_genes`` and ``percent_mito``. There is no batch column.

    Source: scanpy (BSD-3-Clause), 10x Genomics public data, Zheng et al. 2017.
    """
    path = _scanpy_datasets_dir() / _PBMC68K_FILE
    if not path.is_file():
        raise DataFileError(
            f"{path}: not found; pbmc68k() rebuilds its counts from the file the scanpy wheel ships "
            "(reinstall scanpy)"
        )
    with warnings.catch_warnings():
        # The file predates anndata's current layout (obsp in uns); the warning is scanpy's to fix.
        warnings.simplefilter("ignore")
        source = anndata.read_h5ad(path)
    if source.raw is None or "n_counts" not in source.obs:
        raise DataFileError(
            f"{path}: expected raw.X and obs['n_counts'] (scanpy's pbmc68k_reduced)"
        )

    log_cp10k = sp.csr_matrix(source.raw.X, dtype=np.float64)
    log_cp10k.sort_indices()
    library_size_n = source.obs["n_counts"].to_numpy(dtype=np.float64)
    counts = log_cp10k.copy()
    row_of_entry = np.repeat(np.arange(counts.shape[0]), np.diff(counts.indptr))
    counts.data = np.rint(np.expm1(log_cp10k.data) * library_size_n[row_of_entry] / 1e4)
    counts = sp.csr_matrix(counts, dtype=np.int32)

    # Series copies keep the index and the categorical dtypes (category order included).
    obs = pd.DataFrame({new: source.obs[old].copy() for new, old in _PBMC68K_OBS})
    var = pd.DataFrame(index=source.raw.var_names.copy())
    return anndata.AnnData(X=counts, obs=obs, var=var, uns={"provenance": _PBMC68K_PROVENANCE})


def h5ad_files(path: str | Path | Sequence[str | Path]) -> str | list[str]:
    """Check that one ``.h5ad`` path (or each of a list) exists; return it as given, ``~`` expanded.

    The DataModule opens the files itself (in memory or ``backed``); this only fails early, naming
    the missing file, when a config points at the wrong place.
    """
    paths = [path] if isinstance(path, str | Path) else list(path)
    if not paths:
        raise DataFileError("data.path is an empty list; give one .h5ad file or a list of them")
    resolved = [str(Path(p).expanduser()) for p in paths]
    for original, candidate in zip(paths, resolved, strict=True):
        if not Path(candidate).is_file():
            raise DataFileError(
                f"{original}: no such file (looked in {Path(candidate).resolve().parent}); "
                "data.path takes an .h5ad file or a list of them"
            )
    return resolved[0] if isinstance(path, str | Path) else resolved


HSMM_TIMECOURSE_FILE = "hsmm_myoblast_timecourse_1000genes.h5ad"


def hsmm_timecourse() -> anndata.AnnData:
    """271 human skeletal myoblasts sampled at 0, 24, 48 and 72 hours of differentiation
    (Trapnell et al. 2014), on their 1,000 most variable genes, as FPKM (NOT counts).

    Shipped in ``enhanced_dm/resources/`` (Artistic-2.0; how it was made: its MANIFEST.md).
    ``obs["Hours"]`` is the time course; also ``Pseudotime`` (Monocle), ``State`` (3),
    ``Media`` and ``batch`` (the library plate, confounded with ``Hours``). var_names are
    Ensembl ids, ``var["gene_short_name"]`` the symbols. Per-cell normalization and z-scores
    apply; models of counts (Pearson residuals) refuse these values.
    """
    return anndata.read_h5ad(bundled_path(HSMM_TIMECOURSE_FILE))


def bundled_path(name: str) -> Path:
    """Path of a small annotation file shipped in ``enhanced_dm/resources/`` (see its MANIFEST.md)."""
    path = RESOURCES_DIR / name
    if not path.is_file() or name == "MANIFEST.md":
        available = sorted(
            p.name for p in RESOURCES_DIR.iterdir() if p.is_file() and p.name != "MANIFEST.md"
        )
        raise DataFileError(
            f"no bundled file named {name!r} in {RESOURCES_DIR}; available: {available or 'none'}"
        )
    return path
