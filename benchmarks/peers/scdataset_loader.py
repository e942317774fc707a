"""scDataset (``BlockShuffling``) over a backed ``.h5ad``.

Each fetch takes ``fetch_factor * batch_size`` cells drawn as shuffled blocks of ``block_size``,
sorts the indices, reads them in one backed-AnnData call and splits the fetch into shuffled
batches. The fetch keeps X sparse (scDataset's stock ``adata_to_mindex`` would densify), so all
loaders hand over the same sparse rows. Not a project dependency: ``pip install scdataset``.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from typing import Any

import numpy as np
from common import EpochFactory, Minibatch

from peers import LoaderConfig, Settings

BLOCK_SIZES = (16, 64)
FETCH_FACTORS = (16, 64)


def scdataset_loader(settings: Settings, block_size: int, fetch_factor: int) -> EpochFactory:
    """``scDataset(backed AnnData, BlockShuffling(block_size), batch_size, fetch_factor)``."""
    import anndata
    from scdataset import BlockShuffling, scDataset

    adata = anndata.read_h5ad(settings.path, backed="r")
    codes = adata.obs[settings.cell_type_key].cat.codes.to_numpy()

    def fetch(collection: Any, indices: np.ndarray) -> tuple[Any, np.ndarray]:
        return collection.X[indices], codes[indices]

    def split(fetched: tuple[Any, np.ndarray], batch_indices: np.ndarray) -> Minibatch:
        rows, labels = fetched
        return Minibatch(rows[batch_indices], labels[batch_indices])

    dataset = scDataset(
        adata,
        BlockShuffling(block_size=block_size),
        batch_size=settings.batch_size,
        fetch_factor=fetch_factor,
        fetch_callback=fetch,
        batch_callback=split,
        seed=settings.seed,
    )

    def epoch() -> Iterator[Minibatch]:
        return iter(dataset)

    return epoch


def configs(settings: Settings) -> list[LoaderConfig]:
    """One row per (block size, fetch factor)."""
    rows = []
    for block_size in BLOCK_SIZES:
        for fetch_factor in FETCH_FACTORS:
            name = f"scDataset b{block_size} f{fetch_factor}"
            if importlib.util.find_spec("scdataset") is None:
                rows.append(LoaderConfig(name, "peer", skip="pip install scdataset to run it"))
                continue
            rows.append(
                LoaderConfig(
                    name,
                    "peer",
                    setup=lambda b=block_size, f=fetch_factor: scdataset_loader(settings, b, f),
                    options={"block_size": block_size, "fetch_factor": fetch_factor},
                )
            )
    return rows
