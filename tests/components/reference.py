"""Independent numpy / pandas / scanpy references for the gene-set components (no enhanced_dm code).

GMT lines are split by hand, symbols matched by ``str.casefold``, the normalized matrix made by
scanpy, statistics taken with numpy (ddof=1, zero std -> 1, as ``scanpy.pp.scale``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import anndata as ad
import numpy as np
import scanpy as sc

from enhanced_dm.datamodules.base import BaseEnhancedDataModule

PBMC = "singlecell/pbmc68k_reduced_counts.h5ad"


def gmt_sets(path: Path) -> dict[str, list[str]]:
    """Name -> genes of every non-blank GMT line (no validation: the files are real and clean)."""
    sets: dict[str, list[str]] = {}
    for line in Path(path).read_text().splitlines():
        if line.strip():
            fields = line.split("\t")
            sets[fields[0]] = [gene for gene in fields[2:] if gene]
    return sets


def membership(
    sets: Mapping[str, Sequence[str]], var_names: Iterable[str]
) -> tuple[np.ndarray, np.ndarray]:
    """(sets x genes bool membership, distinct symbols per set), symbols matched case-insensitively."""
    names = [str(name).casefold() for name in var_names]
    columns: dict[str, list[int]] = {}
    for index, name in enumerate(names):
        columns.setdefault(name, []).append(index)  # a duplicated symbol names several genes
    matrix = np.zeros((len(sets), len(names)), dtype=bool)
    before = np.zeros(len(sets), dtype=np.int64)
    for row, genes in enumerate(sets.values()):
        keys = {gene.casefold() for gene in genes}
        before[row] = len(keys)
        for key in keys:
            matrix[row, columns.get(key, [])] = True
    return matrix, before


def train_zscore(values: np.ndarray, train: np.ndarray) -> np.ndarray:
    """Standardize columns with the train rows' mean and std (ddof=1; zero std -> 1)."""
    mean = values[train].mean(axis=0)
    std = values[train].std(axis=0, ddof=1)
    return (values - mean) / np.where(std > 0, std, 1.0)


def normalized_pbmc(path: Path, train: np.ndarray) -> np.ndarray:
    """scanpy ``normalize_total(1e4)`` -> ``log1p``, then the genes z-scored with train statistics.

    Asserts that the train rows equal ``scanpy.pp.scale`` of the train cells, so the reference
    is scanpy's scaling, applied to all cells with the train mean and std.
    """
    adata = ad.read_h5ad(path)
    adata.X = adata.X.astype(np.float64)
    sc.pp.normalize_total(adata, target_sum=1e4)
    sc.pp.log1p(adata)
    x = np.asarray(adata.X.toarray())
    scaled_train = adata[train].copy()
    sc.pp.scale(scaled_train)
    z = train_zscore(x, train)
    np.testing.assert_allclose(z[train], scaled_train.X, atol=1e-10)
    return z


def all_outputs(dm: BaseEnhancedDataModule, keys: Sequence[str]) -> dict[str, np.ndarray]:
    """``keys`` of every cell's normalized batch (predict_dataloader), in cell order."""
    dm.setup("predict")
    parts: dict[str, list[np.ndarray]] = {key: [] for key in [*keys, "cell_index_n"]}
    for batch in dm.predict_dataloader():
        out = dm.normalize(batch)
        for key in parts:
            parts[key].append(out[key].numpy())
    result = {key: np.concatenate(values) for key, values in parts.items()}
    assert result["cell_index_n"].tolist() == list(range(len(result["cell_index_n"])))
    return result


def decoupler_aucell(x_ng: np.ndarray, sets_pg: np.ndarray, n_up: int) -> np.ndarray:
    """decoupler 1.x ``nb_aucell`` line by line (recovery-curve area / its maximum), with ties
    ranked by gene order (``kind="stable"``) instead of decoupler's unspecified order."""
    scores = np.zeros((x_ng.shape[0], sets_pg.shape[0]))
    for cell, row in enumerate(x_ng):
        rank = np.argsort(np.argsort(-row, kind="stable"), kind="stable") + 1
        for p, members in enumerate(sets_pg):
            fset = np.flatnonzero(members)
            x_th = np.arange(1, fset.shape[0] + 1)
            x_th = x_th[x_th < n_up]
            max_auc = np.sum(np.diff(np.append(x_th, n_up)) * x_th)
            x = rank[fset]
            x = np.sort(x[x < n_up])
            y = np.arange(x.shape[0]) + 1
            x = np.append(x, n_up)
            scores[cell, p] = np.sum(np.diff(x) * y) / max_auc
    return scores
