"""Seed-compatible collate-style loaders (``BaseEnhancedLoader``, ...) for users without Lightning.

Each loader wraps the DataModule of the same name: it fits the statistics on construction (or
loads them from a DataModule's ``state_dict()``) and then works as a ``collate_fn``, applying the
very same pipeline on the CPU::

    loader = BaseEnhancedLoader(cfg, data="cells.h5ad", normalization_type="z_score")
    dataloader = DataLoader(loader.dataset(), batch_size=256, collate_fn=loader, num_workers=4)

Items may be the dicts that ``loader.dataset()`` yields, 1-D count vectors over
``loader.var_names`` (tensor, numpy or scipy sparse row), or dicts ``{"counts": vector, <obs
name>: label or code}``. Statistics cover the batches of every DataLoader worker too.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, ClassVar, TypeVar

import numpy as np
import scipy.sparse as sp
import torch
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import get_worker_info

from enhanced_dm.data.collate import CellDataset, collate_cells
from enhanced_dm.data.sequences import SequenceRows, read_sequences
from enhanced_dm.data.store import check_values
from enhanced_dm.datamodules.base import BaseEnhancedDataModule
from enhanced_dm.errors import ConfigError
from enhanced_dm.monitors.merge import WorkerMonitorStates, merged
from enhanced_dm.monitors.pipeline_monitor import PipelineMonitor

__all__ = ["PROCESS_LOCAL_STATS", "BaseEnhancedLoader"]

LoaderT = TypeVar("LoaderT", bound="BaseEnhancedLoader")

PROCESS_LOCAL_STATS: dict[str, str] = {
    "sequences_served": "counted by the temporal component in the process that reshapes each "
    "batch, not by a monitor: the counts of DataLoader workers are not in it",
}
"""Report entries a component counts outside its monitors, in the process that normalizes: the
workers' share cannot be merged back, so once a worker has normalized a batch a report holding
one of them says so under ``"not_aggregated"`` (entry path -> reason). Running state (memory
banks, moving statistics) is not among them: it changes only in training mode, which refuses
workers, so the main process holds all of it."""


class BaseEnhancedLoader:
    """A fitted pipeline as a ``collate_fn``: the collate-style twin of
    :class:`~enhanced_dm.BaseEnhancedDataModule`, and the base class of every loader (a loader
    of another DataModule is a subclass naming it in ``datamodule_class``).

    * Fitted from data: ``BaseEnhancedLoader(cfg, data=..., **options)`` sets the DataModule up
      (``options`` are its options), which fits the statistics (or reads its cache).
    * Or from a DataModule's state: ``BaseEnhancedLoader(cfg, data=..., state=dm.state_dict(),
      **options)`` with the options the state was made with (``dm.state_dict()`` of a set-up
      DataModule, or the DataModule entry of a Lightning checkpoint) loads its fitted
      statistics, split, category maps, component constants and running state: no fitting pass
      runs, and batches equal the DataModule's. A state of other genes or other fitted steps is
      refused; options that keep the same steps (``per_cell_normalization``, ...) are not
      checked against it, so pass the same ones.

    ``get_normalization_stats()`` and every ``get_<component>_stats()`` of the DataModule
    report the batches collated in this process and in every DataLoader worker (``num_workers >
    0``, persistent or not, ``fork`` or ``spawn``): workers publish their monitors' states
    after each batch (:class:`~enhanced_dm.monitors.merge.WorkerMonitorStates`) and the reports
    are computed from the merge. Entries that cannot be merged are named under
    ``"not_aggregated"`` (:data:`PROCESS_LOCAL_STATS`). ``reset_normalization_stats()`` clears
    the workers' share too. Picklable.
    """

    datamodule_class: ClassVar[type[BaseEnhancedDataModule]] = BaseEnhancedDataModule

    def __init__(
        self,
        cfg: Any = None,
        data: Any = None,
        *,
        training: bool = False,
        state: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> None:
        from_cfg = _config_options(cfg, self.datamodule_class)
        data = from_cfg.pop("data", None) if data is None else data
        options = {**from_cfg, **options}
        if data is None:
            raise ConfigError(
                f"{type(self).__name__} needs data= (a path, list of paths or "
                "AnnData) to fit its normalization statistics on"
            )
        self.cfg = cfg
        self.training = training
        self.datamodule = self.datamodule_class(data=data, cfg=cfg, **options)
        if state is not None:
            self.datamodule.load_state_dict(dict(state))  # before setup: applied there, no fit
        self.datamodule.setup("fit")
        self._batches = 0
        self._worker_states = WorkerMonitorStates()

    def train(self: LoaderT, mode: bool = True) -> LoaderT:
        """Training mode: batches are normalized in the ``"train"`` stage, so training-only
        steps (augmentation) run and components update their running state. Returns self."""
        self.training = mode
        return self

    def eval(self: LoaderT) -> LoaderT:
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

    @property
    def _monitor(self) -> PipelineMonitor:
        monitor = self.datamodule.monitor
        assert monitor is not None, "set up in __init__"
        return monitor

    def __call__(self, items: Sequence[Any]) -> dict[str, torch.Tensor]:
        """Collate ``items`` into one batch and normalize it (in a DataLoader worker, then
        publish the worker's monitor state for the main process's reports)."""
        in_worker = get_worker_info() is not None
        if in_worker:
            if self.training:
                running = [c.name for c in self.datamodule.components if c.has_running_state]
                if running:
                    raise ConfigError(
                        f"{type(self).__name__} in training mode keeps running state "
                        f"(components {running}); updates made in DataLoader workers would be "
                        "lost: use num_workers=0"
                    )
            self._worker_states.start_batch(self._monitor)
        store = self.datamodule._require_store()
        if items and all(isinstance(item, SequenceRows) for item in items):
            batch = read_sequences(store, np.stack([item.rows_s for item in items]))
        else:
            batch = collate_cells(
                [self._as_batch(item, position) for position, item in enumerate(items)]
            )
        stamped: dict[str, Any] = {**batch, "batch_index": self._batch_index()}
        out = self.datamodule.normalize(stamped, stage="train" if self.training else "predict")
        if in_worker:
            self._worker_states.publish()
        return out

    def _batch_index(self) -> int:
        """The next batch's number, which seeds its random draws: counted in this process, and in
        a DataLoader worker offset by the worker's seed (new per worker and per epoch of
        non-persistent workers), so no two batches repeat a draw."""
        index = self._batches
        self._batches += 1
        info = get_worker_info()
        return index if info is None else (info.seed % 2**31) * 2**20 + index

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
        """Per-transform output statistics of the batches collated so far, in this process and
        in DataLoader workers."""
        return self._stats("get_normalization_stats")

    def reset_normalization_stats(self) -> None:
        """Clear the output statistics, the workers' share included (persistent workers start
        over at their next batch)."""
        self.datamodule.reset_normalization_stats()
        self._worker_states.reset()

    def __getattr__(self, name: str) -> Callable[[], Any]:
        # get_pathway_stats(), get_temporal_stats(), ...: the DataModule's, over merged monitors.
        if name.startswith("get_") and name.endswith("_stats") and "datamodule" in self.__dict__:
            method = getattr(self.datamodule, name)  # AttributeError: no such report

            @functools.wraps(method)
            def stats() -> Any:
                return self._stats(name)

            return stats
        raise AttributeError(name)

    def _stats(self, method: str) -> Any:
        """The DataModule's ``method()`` while its monitors also hold the workers' states."""
        with self._merged_monitor():
            stats = getattr(self.datamodule, method)()
        if self._worker_states.workers_used and isinstance(stats, dict):
            local = dict(_entries_named(stats, PROCESS_LOCAL_STATS))
            if local:
                stats["not_aggregated"] = local
        return stats

    @contextmanager
    def _merged_monitor(self) -> Iterator[None]:
        """Swap in a copy of the DataModule's monitor merged with every worker's published
        state; this process's own monitor is put back on exit."""
        published = self._worker_states.collect()
        if not published:
            yield
            return
        own = self._monitor
        self.datamodule.monitor = merged(own, published)
        try:
            yield
        finally:
            self.datamodule.monitor = own


def _entries_named(
    report: Mapping[str, Any], reasons: Mapping[str, str], path: str = ""
) -> Iterator[tuple[str, str]]:
    """(dotted path, reason) of every entry of a nested report whose key is in ``reasons``."""
    for key, value in report.items():
        if key in reasons:
            yield path + str(key), reasons[key]
        elif isinstance(value, Mapping):
            yield from _entries_named(value, reasons, f"{path}{key}.")


def _config_options(cfg: Any, datamodule_class: type[BaseEnhancedDataModule]) -> dict[str, Any]:
    """``data`` and the DataModule's declared options that ``cfg`` holds (a dict, an OmegaConf
    config or any object with attributes); other entries of ``cfg`` are not ours and ignored."""
    if cfg is None:
        return {}
    if isinstance(cfg, DictConfig):
        cfg = OmegaConf.to_container(cfg, resolve=True)
    names = ["data", *(option.name for option in datamodule_class.declared_options())]
    if isinstance(cfg, Mapping):
        return {name: cfg[name] for name in names if name in cfg}
    return {name: getattr(cfg, name) for name in names if hasattr(cfg, name)}


# Loaders of the biological DataModules follow; each imports its DataModule next to it.
from enhanced_dm.datamodules.hierarchical import HierarchicalDataModule  # noqa: E402

__all__ += ["HierarchicalDataLoader"]


class HierarchicalDataLoader(BaseEnhancedLoader):
    """Collate-style twin of :class:`~enhanced_dm.datamodules.hierarchical.HierarchicalDataModule`
    (``num_pathways``, ``num_compartments``, ``pathway_annotation_file``, ... as there);
    ``get_pathway_stats()`` and ``get_compartment_stats()`` delegate to it."""

    datamodule_class = HierarchicalDataModule


from enhanced_dm.datamodules.regulatory import RegulatoryDataModule  # noqa: E402

__all__ += ["RegulatoryDataLoader"]


class RegulatoryDataLoader(BaseEnhancedLoader):
    """Collate-style twin of :class:`~enhanced_dm.datamodules.regulatory.RegulatoryDataModule`
    (``interaction_matrix_file``, ``gene_type_annotation_file``,
    ``regulatory_strength_threshold``, ... as there); ``get_regulatory_stats()`` delegates."""

    datamodule_class = RegulatoryDataModule


from enhanced_dm.datamodules.resource import ResourceDataModule  # noqa: E402

__all__ += ["ResourceDataLoader"]


class ResourceDataLoader(BaseEnhancedLoader):
    """Collate-style twin of :class:`~enhanced_dm.datamodules.resource.ResourceDataModule`
    (``resource_dim``, ``num_resource_types``, ``energy_dim``, ``nutrient_dim``,
    ``resource_efficiency_range``, ``regress_out``, ... as there); ``get_resource_stats()``
    delegates."""

    datamodule_class = ResourceDataModule


from enhanced_dm.datamodules.temporal import TemporalDataModule  # noqa: E402

__all__ += ["TemporalDataLoader"]


class TemporalDataLoader(BaseEnhancedLoader):
    """Collate-style twin of :class:`~enhanced_dm.datamodules.temporal.TemporalDataModule`
    (``time_steps``, ``max_sequence_length``, ``temporal_sampling_strategy``, ``time_key``, ...
    as there); ``get_temporal_stats()`` delegates. With ``sequence_mode=True`` iterate
    ``loader.batch_sampler(split)`` (sequences are built by the sampler, not by a collate
    function)."""

    datamodule_class = TemporalDataModule


from enhanced_dm.datamodules.stochastic import StochasticDataModule  # noqa: E402

__all__ += ["StochasticDataLoader"]


class StochasticDataLoader(BaseEnhancedLoader):
    """Collate-style twin of :class:`~enhanced_dm.datamodules.stochastic.StochasticDataModule`
    (``noise_dim``, ``num_noise_types``, ``intrinsic_noise_dim``, ``extrinsic_noise_dim``,
    ``noise_strength_range``, ... as there); in training mode (``loader.train()``) it augments;
    ``get_stochastic_stats()`` delegates."""

    datamodule_class = StochasticDataModule


from enhanced_dm.datamodules.memory import MemoryDataModule  # noqa: E402

__all__ += ["MemoryDataLoader"]


class MemoryDataLoader(BaseEnhancedLoader):
    """Collate-style twin of :class:`~enhanced_dm.datamodules.memory.MemoryDataModule`
    (``memory_dim``, ``memory_size``, ``num_memory_types``, ``num_epigenetic_states``,
    ``memory_decay_rate``, ... as there); in training mode (``loader.train()``) batches update
    the moving statistics and the bank (no DataLoader workers then); ``get_memory_stats()``
    delegates."""

    datamodule_class = MemoryDataModule


from enhanced_dm.datamodules.multiscale import MultiScaleDataModule  # noqa: E402

__all__ += ["MultiScaleDataLoader"]


class MultiScaleDataLoader(BaseEnhancedLoader):
    """Collate-style twin of :class:`~enhanced_dm.datamodules.multiscale.MultiScaleDataModule`
    (``molecular_scale_dim``, ``pathway_scale_dim``, ``cellular_scale_dim``,
    ``num_hierarchy_levels``, ``num_scales``, ... as there); ``get_multiscale_stats()``
    delegates."""

    datamodule_class = MultiScaleDataModule


from enhanced_dm.datamodules.full import FullVirtualCellDataModule  # noqa: E402

__all__ += ["FullVirtualCellLoader"]


class FullVirtualCellLoader(BaseEnhancedLoader):
    """Collate-style twin of :class:`~enhanced_dm.datamodules.full.FullVirtualCellDataModule`
    (``num_pathways``, ``num_compartments``, ``time_steps``, ``memory_dim``, ``noise_dim``,
    ``resource_dim``, the annotation files and every component option, as there);
    ``get_comprehensive_stats()`` and every component's getter delegate."""

    datamodule_class = FullVirtualCellDataModule
