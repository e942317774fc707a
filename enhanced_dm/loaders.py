"""Seed-compatible collate-style loaders (``BaseEnhancedLoader``, ...) for users without Lightning.

Each loader wraps the DataModule of the same name: it fits the statistics on construction and then
works as a ``collate_fn``, applying the very same pipeline on the CPU::

    loader = BaseEnhancedLoader(cfg, data="cells.h5ad", normalization_type="z_score")
    dataloader = DataLoader(loader.dataset(), batch_size=256, collate_fn=loader)

Items may be the dicts that ``loader.dataset()`` yields, 1-D count vectors over
``loader.var_names`` (tensor, numpy or scipy sparse row), or dicts ``{"counts": vector, <obs
name>: label or code}``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import numpy as np
import scipy.sparse as sp
import torch
from torch.utils.data import get_worker_info

from enhanced_dm.data.collate import CellDataset, collate_cells
from enhanced_dm.data.sequences import SequenceRows, read_sequences
from enhanced_dm.data.store import check_values
from enhanced_dm.datamodules.base import BaseEnhancedDataModule
from enhanced_dm.errors import ConfigError

__all__ = ["BaseEnhancedLoader", "EnhancedCollateLoader"]


class EnhancedCollateLoader:
    """A fitted pipeline as a ``collate_fn``; subclasses name the DataModule they wrap."""

    datamodule_class: ClassVar[type[BaseEnhancedDataModule]] = BaseEnhancedDataModule

    def __init__(
        self, cfg: Any = None, data: Any = None, *, training: bool = False, **options: Any
    ) -> None:
        if data is None and cfg is not None:
            data = _config_value(cfg, "data")
        if data is None:
            raise ConfigError(
                f"{type(self).__name__} needs data= (a path, list of paths or "
                "AnnData) to fit its normalization statistics on"
            )
        self.cfg = cfg
        self.training = training
        self.datamodule = self.datamodule_class(data=data, cfg=cfg, **options)
        self.datamodule.setup("fit")
        self._batches = 0

    def train(self, mode: bool = True) -> EnhancedCollateLoader:
        """Training mode: batches are normalized in the ``"train"`` stage, so training-only
        steps (augmentation) run and components update their running state. Returns self."""
        self.training = mode
        return self

    def eval(self) -> EnhancedCollateLoader:
        """Evaluation mode (the default): the ``"predict"`` stage, nothing random."""
        return self.train(False)

    def batch_sampler(self, split: str | None = None, shuffle: bool | None = None) -> Any:
        """A batch sampler over the cells of ``split`` (all cells when None) for
        ``DataLoader(loader.dataset(), batch_sampler=..., collate_fn=loader)``: the component's
        own when one replaces it (sequences: a collate function alone cannot build them), else
        the block-shuffle sampler. ``shuffle`` defaults to the training mode. Sampled rows are
        global: pass ``loader.dataset()`` (all cells), not a split's dataset."""
        dm = self.datamodule
        indices = np.arange(dm._require_store().n_obs) if split is None else dm.split[split]
        return dm._sampler(indices, self.training if shuffle is None else shuffle, pooled=False)

    @property
    def var_names(self) -> list[str]:
        return self.datamodule.var_names

    def dataset(self, split: str | None = None) -> CellDataset:
        """Per-cell dataset over all cells, or over one split (``"train"``, ``"val"``, ``"test"``)."""
        store = self.datamodule._require_store()
        return CellDataset(store, None if split is None else self.datamodule.split[split].tolist())

    def __call__(self, items: Sequence[Any]) -> dict[str, torch.Tensor]:
        if self.training and get_worker_info() is not None:
            running = [c.name for c in self.datamodule.components if c.has_running_state]
            if running:
                raise ConfigError(
                    f"{type(self).__name__} in training mode keeps running state (components "
                    f"{running}); updates made in DataLoader workers would be lost: use "
                    "num_workers=0"
                )
        store = self.datamodule._require_store()
        if items and all(isinstance(item, SequenceRows) for item in items):
            batch = read_sequences(store, np.stack([item.rows_s for item in items]))
        else:
            batch = collate_cells(
                [self._as_batch(item, position) for position, item in enumerate(items)]
            )
        stamped: dict[str, Any] = {**batch, "batch_index": self._batches}
        self._batches += 1
        return self.datamodule.normalize(stamped, stage="train" if self.training else "predict")

    def _as_batch(self, item: Any, position: int) -> dict[str, torch.Tensor]:
        if isinstance(item, dict) and "counts_ng" in item:
            return item
        labels = (
            {key: value for key, value in item.items() if key != "counts"}
            if isinstance(item, dict)
            else {}
        )
        counts = item["counts"] if isinstance(item, dict) else item
        row = sp.csr_matrix(
            np.asarray(
                counts.cpu()
                if isinstance(counts, torch.Tensor)
                else counts.toarray()
                if sp.issparse(counts)
                else counts
            ).reshape(1, -1)
        )
        if row.shape[1] != len(self.var_names):
            raise ConfigError(
                f"item {position} has {row.shape[1]} genes; the loader's gene space "
                f"has {len(self.var_names)} (loader.var_names)"
            )
        store = self.datamodule._require_store()
        check_values(row.data, f"item {position}", require_integer=store.is_counts)
        values = torch.from_numpy(row.data).to(torch.int32 if store.is_counts else torch.float32)
        batch = {
            "counts_ng": torch.sparse_csr_tensor(
                torch.from_numpy(row.indptr).long(),
                torch.from_numpy(row.indices).long(),
                values,
                size=row.shape,
                check_invariants=False,
            ),
            "total_counts_n": torch.tensor([float(labels.pop("total_counts", row.sum()))]),
            "cell_index_n": torch.tensor([int(labels.pop("cell_index", -1))]),
        }
        for name, value in labels.items():
            batch[f"{name}_n"] = torch.tensor([self._code(name, value)])
        return batch

    def _code(self, name: str, value: Any) -> int | float:
        categories = self.datamodule.categories.get(name)
        if categories is None or isinstance(value, int | np.integer):
            return value
        return categories.index(str(value)) if str(value) in categories else -1

    def get_normalization_stats(self) -> dict[str, dict[str, float]]:
        """Per-transform output statistics of the batches collated so far."""
        return self.datamodule.get_normalization_stats()

    def reset_normalization_stats(self) -> None:
        """Clear the output statistics."""
        self.datamodule.reset_normalization_stats()

    def __getattr__(self, name: str) -> Callable[[], Any]:
        # get_pathway_stats(), get_temporal_stats(), ... delegate to the DataModule's components.
        if name.startswith("get_") and name.endswith("_stats") and "datamodule" in self.__dict__:
            return getattr(self.datamodule, name)
        raise AttributeError(name)


class BaseEnhancedLoader(EnhancedCollateLoader):
    """Collate-style twin of :class:`~enhanced_dm.BaseEnhancedDataModule`."""


def _config_value(cfg: Any, key: str) -> Any:
    if isinstance(cfg, dict):
        return cfg.get(key)
    return getattr(cfg, key, None)


# Loaders of the biological DataModules follow; each imports its DataModule next to it.
from enhanced_dm.datamodules.hierarchical import HierarchicalDataModule  # noqa: E402

__all__ += ["HierarchicalDataLoader"]


class HierarchicalDataLoader(EnhancedCollateLoader):
    """Collate-style twin of :class:`~enhanced_dm.datamodules.hierarchical.HierarchicalDataModule`
    (``num_pathways``, ``num_compartments``, ``pathway_annotation_file``, ... as there);
    ``get_pathway_stats()`` and ``get_compartment_stats()`` delegate to it."""

    datamodule_class = HierarchicalDataModule


from enhanced_dm.datamodules.regulatory import RegulatoryDataModule  # noqa: E402

__all__ += ["RegulatoryDataLoader"]


class RegulatoryDataLoader(EnhancedCollateLoader):
    """Collate-style twin of :class:`~enhanced_dm.datamodules.regulatory.RegulatoryDataModule`
    (``interaction_matrix_file``, ``gene_type_annotation_file``,
    ``regulatory_strength_threshold``, ... as there); ``get_regulatory_stats()`` delegates."""

    datamodule_class = RegulatoryDataModule


from enhanced_dm.datamodules.resource import ResourceDataModule  # noqa: E402

__all__ += ["ResourceDataLoader"]


class ResourceDataLoader(EnhancedCollateLoader):
    """Collate-style twin of :class:`~enhanced_dm.datamodules.resource.ResourceDataModule`
    (``resource_dim``, ``num_resource_types``, ``energy_dim``, ``nutrient_dim``,
    ``resource_efficiency_range``, ``regress_out``, ... as there); ``get_resource_stats()``
    delegates."""

    datamodule_class = ResourceDataModule


from enhanced_dm.datamodules.temporal import TemporalDataModule  # noqa: E402

__all__ += ["TemporalDataLoader"]


class TemporalDataLoader(EnhancedCollateLoader):
    """Collate-style twin of :class:`~enhanced_dm.datamodules.temporal.TemporalDataModule`
    (``time_steps``, ``max_sequence_length``, ``temporal_sampling_strategy``, ``time_key``, ...
    as there); ``get_temporal_stats()`` delegates. With ``sequence_mode=True`` iterate
    ``loader.batch_sampler(split)`` (sequences are built by the sampler, not by a collate
    function)."""

    datamodule_class = TemporalDataModule


from enhanced_dm.datamodules.stochastic import StochasticDataModule  # noqa: E402

__all__ += ["StochasticDataLoader"]


class StochasticDataLoader(EnhancedCollateLoader):
    """Collate-style twin of :class:`~enhanced_dm.datamodules.stochastic.StochasticDataModule`
    (``noise_dim``, ``num_noise_types``, ``intrinsic_noise_dim``, ``extrinsic_noise_dim``,
    ``noise_strength_range``, ... as there); in training mode (``loader.train()``) it augments;
    ``get_stochastic_stats()`` delegates."""

    datamodule_class = StochasticDataModule


from enhanced_dm.datamodules.memory import MemoryDataModule  # noqa: E402

__all__ += ["MemoryDataLoader"]


class MemoryDataLoader(EnhancedCollateLoader):
    """Collate-style twin of :class:`~enhanced_dm.datamodules.memory.MemoryDataModule`
    (``memory_dim``, ``memory_size``, ``num_memory_types``, ``num_epigenetic_states``,
    ``memory_decay_rate``, ... as there); in training mode (``loader.train()``) batches update
    the moving statistics and the bank (no DataLoader workers then); ``get_memory_stats()``
    delegates."""

    datamodule_class = MemoryDataModule
