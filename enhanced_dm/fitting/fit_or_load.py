"""Fitted statistics from the cache or from a fit, the same on every DDP rank."""

from __future__ import annotations

import copy
import hashlib
import logging
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from enhanced_dm.errors import ConfigError, FittingError
from enhanced_dm.fitting.cache import StatsCache, fingerprint
from enhanced_dm.fitting.driver import fit_pipeline, load_fitted_states
from enhanced_dm.transforms.base import FittableTransform, Pipeline

__all__ = [
    "STATE_VERSION",
    "check_same_data_on_all_ranks",
    "fit_or_load",
    "process_group_world",
    "statistics_key",
]

logger = logging.getLogger(__name__)
STATE_VERSION = 1
"""Version of the DataModule state and of the statistics cache key."""


def process_group_world() -> tuple[int, int]:
    """(rank, world size) of the default process group (the group torchmetrics syncs over)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def _broadcast_from_rank_zero(value: Any) -> Any:
    """Rank 0's ``value`` on every rank (pickled; small objects such as fitted statistics)."""
    holder = [value]
    torch.distributed.broadcast_object_list(holder, src=0)
    return holder[0]


def _digest(indices: np.ndarray) -> str:
    """sha256 of an index array's int64 bytes (fast for millions of cells)."""
    return hashlib.sha256(np.ascontiguousarray(indices, dtype=np.int64).tobytes()).hexdigest()


def statistics_key(
    store_fingerprint: Sequence[str],
    var_names: Sequence[str],
    categories: Mapping[str, Sequence[str]],
    is_counts: bool,
    train_indices: np.ndarray,
    pipeline: Pipeline,
    component_configs: Iterable[Mapping[str, Any]],
) -> str:
    """Fingerprint of data, gene space, categories, train split and pipeline configuration."""
    steps = [(name, type(t).__name__, t.config()) for name, t in pipeline.named_transforms()]
    return fingerprint(
        STATE_VERSION,
        store_fingerprint,
        var_names,
        categories,
        is_counts,
        fingerprint(train_indices.tolist()),
        steps,
        list(component_configs),
    )


def check_same_data_on_all_ranks(
    var_names: Sequence[str],
    categories: Mapping[str, Sequence[str]],
    split: Mapping[str, np.ndarray],
) -> None:
    """Every rank must have built the same gene space, category maps and split (they are built
    deterministically from the same files); fail loudly instead of mixing codes."""
    mine = fingerprint(
        list(var_names),
        dict(categories),
        {name: _digest(indices) for name, indices in split.items()},
    )
    everyone: list[str | None] = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(everyone, mine)
    differing = [rank for rank, theirs in enumerate(everyone) if theirs != everyone[0]]
    if differing:
        raise ConfigError(
            f"ranks {differing} built another gene space, category maps or split than rank 0; "
            "every rank must read the same data files with the same options"
        )


def fit_or_load(
    pipeline: Pipeline,
    *,
    key: Callable[[], str],
    cache_dir: str | Path | None,
    train_batches: Callable[[int, int], Iterable[Mapping[str, torch.Tensor]]],
    device: torch.device,
    progress: bool,
    seed: int,
) -> Path | None:
    """Load the pipeline's statistics from the cache, else fit them; returns the cache file.

    Under DDP (an initialized process group: the one torchmetrics syncs over) every rank fits on
    its own disjoint share of the train cells (``train_batches(rank, world_size)``, each cell
    once) and the metrics' ``compute()`` merges the shares, so N ranks give the statistics of
    one. Only rank 0 reads and writes the cache; its decision (and the statistics it read) are
    broadcast, so the other ranks never read a file that is being written and a node-local
    ``cache_dir`` cannot make ranks disagree. The returned path is rank 0's file on every rank.
    A cached file that does not fit the pipeline is refitted with a warning, never half-loaded.
    """
    rank, world_size = process_group_world()
    if not any(isinstance(t, FittableTransform) and not t.fitted for t in pipeline):
        return None
    cache = StatsCache(cache_dir) if cache_dir is not None else None
    cache_key = key()
    cached = cache.load(cache_key) if cache is not None and rank == 0 else None
    if cached is not None and cache is not None:
        try:
            # Trial load into a copy, so a file that fits only partly leaves nothing behind.
            load_fitted_states(copy.deepcopy(pipeline), cached)
        except (FittingError, KeyError, RuntimeError, TypeError, ValueError) as error:
            warnings.warn(
                f"statistics cache {cache.path(cache_key)} does not fit this pipeline "
                f"({error}); refitting",
                stacklevel=3,
            )
            cached = None
    path = cache.path(cache_key) if cache is not None else None
    if world_size > 1:
        cached, path = _broadcast_from_rank_zero((cached, path))
    if cached is not None:
        load_fitted_states(pipeline, cached)
        logger.info("fitted statistics loaded from the cache %s (no fitting pass)", path)
        return path
    batches = train_batches(rank, world_size)
    states = fit_pipeline(
        pipeline,
        lambda: batches,
        device,
        progress=progress and rank == 0,
        seed=seed,
        global_rank=rank,
    )
    if cache is not None and rank == 0:
        path = cache.save(cache_key, states)
        logger.info("fitted statistics written to the cache %s", path)
    return _broadcast_from_rank_zero(path) if world_size > 1 else path
