"""Plain h5py readers: the sequential hardware bound and the minimal block-shuffle reader.

``h5py-sequential`` reads contiguous row ranges of ``fetch_batches * batch_size`` rows in order
and slices them into batches: no randomness at all, the fastest this file can be read.
``h5py-block-shuffle`` is the ~30-line reader of issue 8: permute blocks of ``block_size`` rows,
read each block of a batch with its own contiguous read, stack them. With ``pool_blocks > 1`` it
reads that many shuffled blocks at once and deals their rows, shuffled, into batches (the
randomness of enhanced-dm's ``shuffle_buffer`` and scDataset's fetch factor, for a matched
comparison). Both yield scipy CSR rows.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import scipy.sparse as sp
from common import EpochFactory, Minibatch

from peers import LoaderConfig, Settings
from peers._h5ad import CsrFile, read_obs_codes, slice_csr


def sequential(settings: Settings, fetch_batches: int = 16) -> EpochFactory:
    """Contiguous reads in file order, ``fetch_batches`` batches per read."""
    store = CsrFile.open(settings.path)
    codes = read_obs_codes(settings.path, settings.cell_type_key)
    batch_size = settings.batch_size
    fetch_rows = fetch_batches * batch_size

    def epoch() -> Iterator[Minibatch]:
        for start in range(0, store.n_cells, fetch_rows):
            stop = min(start + fetch_rows, store.n_cells)
            chunk = store.read_rows(start, stop)
            for low in range(0, stop - start, batch_size):
                high = min(low + batch_size, stop - start)
                yield Minibatch(slice_csr(chunk, low, high), codes[start + low : start + high])

    return epoch


def block_shuffle(settings: Settings, block_size: int = 64, pool_blocks: int = 1) -> EpochFactory:
    """Shuffle blocks of ``block_size`` rows; one contiguous read per block.

    ``pool_blocks > 1``: read ``pool_blocks`` blocks, shuffle their rows, cut them into batches.
    """
    store = CsrFile.open(settings.path)
    codes = read_obs_codes(settings.path, settings.cell_type_key)
    starts = np.arange(0, store.n_cells, block_size)
    blocks_per_batch = max(1, settings.batch_size // block_size)
    rng = np.random.default_rng(settings.seed)

    def pooled_epoch() -> Iterator[Minibatch]:
        order = rng.permutation(starts)
        for first in range(0, order.shape[0], pool_blocks):
            chosen = np.sort(order[first : first + pool_blocks])
            parts = [store.read_rows(s, min(s + block_size, store.n_cells)) for s in chosen]
            pool = sp.vstack(parts, format="csr")
            rows_n = np.concatenate(
                [np.arange(s, min(s + block_size, store.n_cells)) for s in chosen]
            )
            shuffled = rng.permutation(pool.shape[0])
            for low in range(0, shuffled.shape[0], settings.batch_size):
                pick = shuffled[low : low + settings.batch_size]
                yield Minibatch(pool[pick], codes[rows_n[pick]])

    if pool_blocks > 1:
        return pooled_epoch

    def epoch() -> Iterator[Minibatch]:
        order = rng.permutation(starts)
        for first in range(0, order.shape[0], blocks_per_batch):
            chosen = order[first : first + blocks_per_batch]
            parts = [store.read_rows(s, min(s + block_size, store.n_cells)) for s in chosen]
            rows = sp.vstack(parts, format="csr")
            labels = np.concatenate([codes[s : min(s + block_size, store.n_cells)] for s in chosen])
            yield Minibatch(rows, labels)

    return epoch


def configs(settings: Settings) -> list[LoaderConfig]:
    """The two plain-h5py rows of the table."""
    return [
        LoaderConfig(
            "h5py-sequential",
            "limit",
            setup=lambda: sequential(settings),
            options={"order": "file order", "rows_per_read": 16 * settings.batch_size},
        ),
        LoaderConfig(
            "h5py-block-shuffle b64",
            "peer",
            setup=lambda: block_shuffle(settings, 64),
            options={"block_size": 64, "reads": "one per block"},
        ),
        LoaderConfig(
            "h5py-block-shuffle b64 pool16",
            "peer",
            setup=lambda: block_shuffle(settings, 64, pool_blocks=16),
            options={"block_size": 64, "pool_blocks": 16, "reads": "one per block"},
        ),
    ]
