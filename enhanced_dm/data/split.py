"""The split policy: train / val / test cell indices, seeded fractions or an obs column's labels."""

from __future__ import annotations

import numpy as np

from enhanced_dm.data.store import CellStore
from enhanced_dm.errors import DataFileError, FittingError

__all__ = ["SPLIT_NAMES", "make_split"]

SPLIT_NAMES = {"train": "train", "val": "val", "validation": "val", "valid": "val", "test": "test"}
"""Accepted labels of a ``split_key`` column (case-insensitive) and the split each names."""


def make_split(
    store: CellStore,
    *,
    split_key: str | None,
    val_fraction: float,
    test_fraction: float,
    seed: int,
) -> dict[str, np.ndarray]:
    """Sorted train/val/test cell indices: the labels of obs ``split_key``, else a seeded
    permutation cut by ``val_fraction`` and ``test_fraction`` (the same on every rank and run).

    An empty train split is a :class:`~enhanced_dm.errors.FittingError` naming the sizes that
    produced it; an unknown label a :class:`~enhanced_dm.errors.DataFileError`.
    """
    cells = np.arange(store.n_obs)
    if split_key is not None:
        raw = store._concat_obs(split_key)
        labels = raw.astype(str).str.lower().map(SPLIT_NAMES)
        if labels.isna().any():
            bad = sorted(set(raw[labels.isna()].astype(str)))[:5]
            raise DataFileError(
                f"obs column {split_key!r} (split_key) has values {bad}; "
                "expected train / val / test"
            )
        split = {name: cells[(labels == name).to_numpy()] for name in ("train", "val", "test")}
    else:
        order = np.random.default_rng(seed).permutation(store.n_obs)
        n_val = round(val_fraction * store.n_obs)
        n_test = round(test_fraction * store.n_obs)
        split = {
            "val": np.sort(order[:n_val]),
            "test": np.sort(order[n_val : n_val + n_test]),
            "train": np.sort(order[n_val + n_test :]),
        }
    if len(split["train"]) == 0:
        source = (
            f"obs column {split_key!r} (split_key) labels no cell 'train'"
            if split_key is not None
            else f"val_fraction={val_fraction} and test_fraction={test_fraction} "
            f"leave no cell of {store.n_obs} for training"
        )
        raise FittingError(
            f"the train split is empty: {source}; expected at least one train cell "
            "(lower val_fraction/test_fraction or label some cells 'train')"
        )
    return split
