"""BaseEnhancedDataModule: store, split, sampler, fitted pipeline, device hook, monitors, state."""

from __future__ import annotations

import copy
import hashlib
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader

from enhanced_dm.components.base import Component
from enhanced_dm.data.collate import make_dataloader
from enhanced_dm.data.sampler import BlockShuffleSampler
from enhanced_dm.data.store import CellStore, DataInput
from enhanced_dm.errors import ConfigError, DataFileError, FittingError
from enhanced_dm.fitting.cache import StatsCache, fingerprint
from enhanced_dm.fitting.driver import fit_pipeline, fitted_states, load_fitted_states
from enhanced_dm.monitors.pipeline_monitor import NanPolicy, PipelineMonitor
from enhanced_dm.transforms.base import FittableTransform, Pipeline
from enhanced_dm.transforms.densify import Densify, DensifyExpression
from enhanced_dm.transforms.grouped import GroupedTransform
from enhanced_dm.transforms.log1p import Log1p
from enhanced_dm.transforms.normalize_total import NormalizeTotal
from enhanced_dm.transforms.registry import GENE_NORMALIZATIONS, build_gene_normalization

__all__ = ["BaseEnhancedDataModule", "resolve_normalization_type"]

STATE_VERSION = 1
_SPLIT_NAMES = {"train": "train", "val": "val", "validation": "val", "valid": "val", "test": "test"}
_MAX_BATCHES_PER_ITEM = 16


def resolve_normalization_type(
    normalization_type: str, robust_normalization: bool, quantile_normalization: bool
) -> str:
    """The gene-wise normalization named by ``normalization_type`` or by the seed's flags.

    ``robust_normalization=True`` means ``"robust"`` and ``quantile_normalization=True`` means
    ``"quantile"``; a flag that contradicts an explicit other type is a configuration error.
    """
    flagged = [
        name
        for name, on in (("robust", robust_normalization), ("quantile", quantile_normalization))
        if on
    ]
    if len(flagged) > 1:
        raise ConfigError(
            "robust_normalization and quantile_normalization are both True; choose one"
        )
    if flagged and normalization_type not in ("z_score", flagged[0]):
        raise ConfigError(
            f"{flagged[0]}_normalization=True contradicts normalization_type={normalization_type!r}"
        )
    return flagged[0] if flagged else normalization_type


class BaseEnhancedDataModule(L.LightningDataModule):
    """Single-cell minibatches from h5ad files with normalization fitted once on the train split.

    ``setup()`` opens the data (:class:`~enhanced_dm.data.CellStore`), splits the cells (seeded, or
    from ``split_key``), builds the pipeline (densify -> total-count -> log1p (on the stored values) -> dense x_ng -> gene-wise ->
    component transforms) and fits it by streaming passes over the train split, or loads the
    statistics from ``stats_cache_dir`` / a checkpoint. Batches travel as CSR and are normalized on
    the device in :meth:`on_after_batch_transfer`; ``model.training_step`` receives ``x_ng``,
    ``counts_ng``, ``total_counts_n``, ``cell_index_n`` and ``<name>_n`` obs codes.

    Gene-wise normalization (``normalization_type``): ``"z_score"`` (scanpy ``scale``),
    ``"none"``, and the others registered in :mod:`enhanced_dm.transforms.registry`. It is fitted
    per batch with ``batch_aware_normalization`` (needs ``batch_key``) or per cell type with
    ``biological_normalization`` (needs ``cell_type_key``). ``cfg`` is accepted for the seed API
    and ignored.

    Reading: ``backed=True`` keeps the matrix on disk; ``direct_read`` (default) reads rows with
    positional reads where the file stores X uncompressed, contiguous or chunked (see
    :func:`~enhanced_dm.data.prepare.prepare_h5ad`), else h5py reads coalesced spans. Training
    batches are cut from shuffle pools of ``shuffle_buffer`` blocks of ``block_size`` rows, and
    the batches of one pool are read together.

    ``dense_counts=False`` leaves ``counts_ng`` in the batch as the sparse CSR tensor it travelled
    as, for models that read only ``x_ng`` (State / scGPT style; scVI-style models need the dense
    counts): one dense integer write less per batch (on a 2-core CPU run, +15-40 % cells/s). Rejected
    when a pipeline step reads the dense counts.
    """

    def __init__(
        self,
        data: DataInput,
        *,
        normalization_type: str = "z_score",
        per_cell_normalization: bool = True,
        per_gene_normalization: bool = True,
        robust_normalization: bool = False,
        quantile_normalization: bool = False,
        batch_aware_normalization: bool = False,
        biological_normalization: bool = False,
        target_sum: float | str = 1e4,
        log1p: bool = True,
        max_value: float | None = None,
        normalization_options: Mapping[str, Any] | None = None,
        batch_key: str | None = None,
        cell_type_key: str | None = None,
        obs_keys: Sequence[str] = (),
        total_counts_key: str | None = None,
        genes: Sequence[str] | None = None,
        gene_join: Literal["outer", "inner"] = "outer",
        layer: str | None = None,
        counts: bool | Literal["auto"] = "auto",
        split_key: str | None = None,
        val_fraction: float = 0.1,
        test_fraction: float = 0.0,
        seed: int = 0,
        batch_size: int = 256,
        block_size: int = 64,
        shuffle_buffer: int = 16,
        backed: bool = False,
        direct_read: bool = True,
        dense_counts: bool = True,
        num_workers: int = 0,
        pin_memory: bool = False,
        stats_cache_dir: str | Path | None = None,
        stats_max_cells: int = 100_000,
        nan_policy: NanPolicy = "raise",
        progress: bool = True,
        components: Sequence[Component] = (),
        cfg: Any = None,
    ) -> None:
        super().__init__()
        self.data = data
        self.normalization_type = resolve_normalization_type(
            normalization_type, robust_normalization, quantile_normalization
        )
        if self.normalization_type != "none" and self.normalization_type not in GENE_NORMALIZATIONS:
            known = sorted([*GENE_NORMALIZATIONS, "none"])
            raise ConfigError(
                f"unknown normalization_type {normalization_type!r}; expected one of {known}"
            )
        if batch_aware_normalization and biological_normalization:
            raise ConfigError(
                "batch_aware_normalization and biological_normalization both group the "
                "gene statistics; choose one"
            )
        if batch_aware_normalization and batch_key is None:
            raise ConfigError("batch_aware_normalization=True needs batch_key (an obs column)")
        if biological_normalization and cell_type_key is None:
            raise ConfigError("biological_normalization=True needs cell_type_key (an obs column)")
        if not (
            0 <= val_fraction < 1 and 0 <= test_fraction < 1 and val_fraction + test_fraction < 1
        ):
            raise ConfigError(
                f"val_fraction + test_fraction must be in [0, 1), got "
                f"{val_fraction} + {test_fraction}"
            )
        self.per_cell_normalization = per_cell_normalization
        self.per_gene_normalization = per_gene_normalization
        self.batch_aware_normalization = batch_aware_normalization
        self.biological_normalization = biological_normalization
        self.target_sum = target_sum
        self.log1p = log1p
        self.max_value = max_value
        self.normalization_options = {
            "max_value": max_value,
            "stats_max_cells": stats_max_cells,
            "seed": seed,
            **dict(normalization_options or {}),
        }
        self.batch_key = batch_key
        self.cell_type_key = cell_type_key
        self.obs_keys = list(obs_keys)
        self.total_counts_key = total_counts_key
        self.genes = genes
        self.gene_join = gene_join
        self.layer = layer
        self.counts = counts
        self.split_key = split_key
        self.val_fraction = val_fraction
        self.test_fraction = test_fraction
        self.seed = seed
        self.batch_size = batch_size
        self.block_size = block_size
        self.shuffle_buffer = shuffle_buffer
        self.backed = backed
        self.direct_read = direct_read
        self.dense_counts = dense_counts
        self.num_workers = num_workers
        self.pin_memory = pin_memory
        self.stats_cache_dir = stats_cache_dir
        self.nan_policy = nan_policy
        self.progress = progress
        self.components = list(components)
        self.store: CellStore | None = None
        self.pipeline: Pipeline | None = None
        self.monitor: PipelineMonitor | None = None
        self.split: dict[str, np.ndarray] = {}
        self.stats_cache_path: Path | None = None
        self._pending_state: dict[str, Any] | None = None
        self._statistics_ready = False
        self._train_sampler: BlockShuffleSampler | None = None
        self._pending_sampler_state: dict[str, Any] | None = None
        self._pipeline_device: torch.device | None = None

    # ------------------------------------------------------------------------------- setup
    def obs_columns(self) -> dict[str, str]:
        """Batch name -> obs column for every obs field the batches carry."""
        columns = {key: key for key in self.obs_keys}
        if self.batch_key is not None:
            columns["batch"] = self.batch_key
        if self.cell_type_key is not None:
            columns["cell_type"] = self.cell_type_key
        for component in self.components:
            columns.update(component.obs_columns())
        return columns

    @property
    def var_names(self) -> list[str]:
        return self._require_store().var_names

    @property
    def n_genes(self) -> int:
        return self._require_store().n_genes

    @property
    def categories(self) -> dict[str, list[str]]:
        return self._require_store().categories

    def _require_store(self) -> CellStore:
        if self.store is None:
            raise RuntimeError("call setup() first: the data are opened there")
        return self.store

    def setup(self, stage: str | None = None) -> None:
        """Open the data, split, build the pipeline and fit it (once; later calls are no-ops)."""
        if self.store is None:
            pending_categories = (self._pending_state or {}).get("categories")
            self.store = CellStore(
                self.data,
                backed=self.backed,
                direct_read=self.direct_read,
                layer=self.layer,
                genes=self.genes,
                gene_join=self.gene_join,
                obs_columns=self.obs_columns(),
                total_counts_key=self.total_counts_key,
                counts=self.counts,
                categories=pending_categories,
            )
            self.split = self._make_split(self.store)
            for component in self.components:
                component.setup(self.store)
        if self.pipeline is None:
            self.pipeline = self.build_pipeline(self.store)
            self.monitor = PipelineMonitor(
                self.pipeline, self.nan_policy, n_genes=self.store.n_genes
            )
            self._warn_if_counts_needed(self.store)
            if not self._resuming_from_checkpoint():
                self._ensure_fitted()

    def _resuming_from_checkpoint(self) -> bool:
        """Lightning is about to restore this DataModule from a checkpoint (``ckpt_path``).

        Lightning calls ``setup`` before ``load_state_dict``; fitting then would be wasted work,
        so it is deferred to the first dataloader (the checkpoint's statistics arrive before it).
        """
        return (
            self._pending_state is None
            and self.trainer is not None
            and getattr(self.trainer, "ckpt_path", None) is not None
        )

    def _ensure_fitted(self) -> None:
        """Fitted statistics from a restored state, the cache, or a fit (once)."""
        if self._statistics_ready:
            return
        self._fit_or_load()
        self._warn_groups_without_train_cells()
        self._statistics_ready = True
        self._pipeline_device = None  # fitting may have moved the pipeline

    def _make_split(self, store: CellStore) -> dict[str, np.ndarray]:
        """Train/val/test cell indices: seeded fractions, or the labels of obs ``split_key``.

        An empty train split is an error here, at setup, naming the sizes that produced it.
        """
        cells = np.arange(store.n_obs)
        if self.split_key is not None:
            labels = store._concat_obs(self.split_key).astype(str).str.lower().map(_SPLIT_NAMES)
            if labels.isna().any():
                bad = sorted(set(store._concat_obs(self.split_key)[labels.isna()].astype(str)))[:5]
                raise DataFileError(
                    f"obs column {self.split_key!r} (split_key) has values {bad}; "
                    "expected train / val / test"
                )
            split = {name: cells[(labels == name).to_numpy()] for name in ("train", "val", "test")}
        else:
            order = np.random.default_rng(self.seed).permutation(store.n_obs)
            n_val = round(self.val_fraction * store.n_obs)
            n_test = round(self.test_fraction * store.n_obs)
            split = {
                "val": np.sort(order[:n_val]),
                "test": np.sort(order[n_val : n_val + n_test]),
                "train": np.sort(order[n_val + n_test :]),
            }
        if len(split["train"]) == 0:
            source = (
                f"obs column {self.split_key!r} (split_key) labels no cell 'train'"
                if self.split_key is not None
                else f"val_fraction={self.val_fraction} and test_fraction={self.test_fraction} "
                f"leave no cell of {store.n_obs} for training"
            )
            raise FittingError(
                f"the train split is empty: {source}; expected at least one train cell "
                "(lower val_fraction/test_fraction or label some cells 'train')"
            )
        return split

    def _warn_if_counts_needed(self, store: CellStore) -> None:
        """Warn at setup when the gene-wise normalization needs raw counts but the data are not.

        The transform itself refuses non-integer values when it is fitted or applied; this warning
        says why early and repeats the store's verdict (``counts="auto"`` judges from the values).
        """
        spec = GENE_NORMALIZATIONS.get(self.normalization_type)
        if self.per_gene_normalization and spec and spec.needs_raw_counts and not store.is_counts:
            warnings.warn(
                f"normalization_type={self.normalization_type!r} expects raw integer counts, but "
                f"{store.counts_verdict}",
                stacklevel=3,
            )

    def _group_key(self) -> tuple[str | None, int]:
        if self.batch_aware_normalization:
            return "batch_n", len(self.categories["batch"])
        if self.biological_normalization:
            return "cell_type_n", len(self.categories["cell_type"])
        return None, 0

    def build_pipeline(self, store: CellStore) -> Pipeline:
        """Densify, total-count + log1p (per cell), gene-wise normalization, component steps."""
        pipeline = Pipeline([("densify", Densify(self.dense_counts))])
        needs_raw = (
            self.normalization_type in GENE_NORMALIZATIONS
            and GENE_NORMALIZATIONS[self.normalization_type].needs_raw_counts
            and self.per_gene_normalization
        )
        if needs_raw and self.per_cell_normalization:
            raise ConfigError(
                f"normalization_type={self.normalization_type!r} works on raw counts; "
                "set per_cell_normalization=False"
            )
        if self.per_cell_normalization:
            pipeline.add("normalize_total", NormalizeTotal(self.target_sum))
            if self.log1p:
                pipeline.add("log1p", Log1p())
        gene_step = None
        if self.per_gene_normalization and self.normalization_type != "none":
            group_key, n_groups = self._group_key()
            gene_step = build_gene_normalization(
                self.normalization_type,
                store.n_genes,
                n_groups,
                group_key,
                dict(self.normalization_options),
            )
        if gene_step is None or not gene_step.accepts_sparse:
            pipeline.add("densify_x", DensifyExpression())
        if gene_step is not None:
            pipeline.add(self.normalization_type, gene_step)
        for component in self.components:
            for name, transform in component.transforms():
                pipeline.add(name, transform)
        readers = [name for name, step in pipeline.named_transforms() if step.reads_counts]
        if not self.dense_counts and readers:
            raise ConfigError(
                f"dense_counts=False, but pipeline steps {readers} read the dense counts_ng; "
                "leave dense_counts=True for this pipeline"
            )
        return pipeline

    def _world(self) -> tuple[int, int]:
        """(global rank, world size) the data loaders shard over: the attached trainer's, else
        the initialized process group's (a script launched with torchrun), else one process."""
        if self.trainer is not None:
            return self.trainer.global_rank, self.trainer.world_size
        return _process_group_world()

    def _device(self) -> torch.device:
        if self.trainer is not None:
            return self.trainer.strategy.root_device
        return torch.device("cpu")

    def cache_key(self) -> str:
        """Fingerprint of data, gene space, categories, split and pipeline configuration."""
        store = self._require_store()
        assert self.pipeline is not None
        steps = [
            (name, type(t).__name__, t.config()) for name, t in self.pipeline.named_transforms()
        ]
        train_hash = fingerprint(self.split["train"].tolist())
        return fingerprint(
            STATE_VERSION,
            store.fingerprint(),
            store.var_names,
            store.categories,
            store.is_counts,
            train_hash,
            steps,
            [component.config() for component in self.components],
        )

    def _fit_or_load(self) -> None:
        """Fitted statistics from a restored state, the cache, or a fit over the train split.

        Under DDP (an initialized process group: the one torchmetrics syncs over) every rank
        fits on its own disjoint share of the train cells (``even_batches=False``: each cell once,
        no padding) and the metrics' ``compute()`` merges the shares, so N ranks give the
        statistics of one. Only rank 0 reads and writes the cache; its decision (and the
        statistics it read) are broadcast, so the other ranks never read a file that is being
        written and a node-local ``stats_cache_dir`` cannot make ranks disagree.
        ``stats_cache_path`` is then rank 0's file on every rank.
        """
        assert self.pipeline is not None
        rank, world_size = _process_group_world()
        if world_size > 1:
            self._check_same_data_on_all_ranks()
        if self._pending_state is not None:
            self._apply_state(self._pending_state)
            return
        if not any(isinstance(t, FittableTransform) and not t.fitted for t in self.pipeline):
            return
        cache = StatsCache(self.stats_cache_dir) if self.stats_cache_dir is not None else None
        key = self.cache_key()
        cached = cache.load(key) if cache is not None and rank == 0 else None
        if cached is not None and cache is not None:
            try:
                # Trial load into a copy, so a file that fits only partly leaves nothing behind.
                load_fitted_states(copy.deepcopy(self.pipeline), cached)
            except (FittingError, KeyError, RuntimeError, TypeError, ValueError) as error:
                # A whole, checksummed file whose content does not fit this pipeline: refit.
                warnings.warn(
                    f"statistics cache {cache.path(key)} does not fit this pipeline ({error}); "
                    "refitting",
                    stacklevel=2,
                )
                cached = None
        path = cache.path(key) if cache is not None else None
        if world_size > 1:
            cached, path = _broadcast_from_rank_zero((cached, path))
        if cached is not None:
            load_fitted_states(self.pipeline, cached)
            self.stats_cache_path = path
            return
        loader = self._fitting_dataloader(rank, world_size)
        states = fit_pipeline(
            self.pipeline, lambda: loader, self._device(), progress=self.progress and rank == 0
        )
        if cache is not None and rank == 0:
            path = cache.save(key, states)
        self.stats_cache_path = _broadcast_from_rank_zero(path) if world_size > 1 else path

    def _fitting_dataloader(self, rank: int = 0, world_size: int = 1) -> DataLoader:
        """This rank's disjoint share of the train cells, in order, each cell once."""
        sampler = BlockShuffleSampler(
            self.split["train"],
            self.batch_size,
            block_size=self.block_size,
            shuffle=False,
            num_replicas=world_size,
            rank=rank,
            even_batches=False,
        )
        return make_dataloader(
            self._require_store(), sampler, self.num_workers, persistent_workers=False
        )

    def _check_same_data_on_all_ranks(self) -> None:
        """Every rank must have built the same gene space, category maps and split (they are
        built deterministically from the same files); fail loudly instead of mixing codes."""
        store = self._require_store()
        mine = fingerprint(
            store.var_names,
            store.categories,
            {name: _digest(indices) for name, indices in self.split.items()},
        )
        everyone: list[str | None] = [None] * torch.distributed.get_world_size()
        torch.distributed.all_gather_object(everyone, mine)
        differing = [rank for rank, theirs in enumerate(everyone) if theirs != everyone[0]]
        if differing:
            raise ConfigError(
                f"ranks {differing} built another gene space, category maps or split than rank 0; "
                "every rank must read the same data files with the same options"
            )

    def _warn_groups_without_train_cells(self) -> None:
        assert self.pipeline is not None
        for transform in self.pipeline:
            if isinstance(transform, GroupedTransform) and transform.group_key is not None:
                name = transform.group_key.removesuffix("_n")
                transform.warn_unfitted_groups(self.categories.get(name))

    # -------------------------------------------------------------------------- dataloaders
    def _sampler(self, indices: np.ndarray, shuffle: bool) -> BlockShuffleSampler:
        """Training (``shuffle``): equal batch counts per rank. Otherwise every cell once."""
        rank, world_size = self._world()
        return BlockShuffleSampler(
            indices,
            self.batch_size,
            block_size=self.block_size,
            shuffle_buffer=self.shuffle_buffer,
            shuffle=shuffle,
            seed=self.seed,
            num_replicas=world_size,
            rank=rank,
            even_batches=shuffle,
            batches_per_item=self._batches_per_pool() if shuffle else 1,
        )

    def _batches_per_pool(self) -> int:
        """Batches cut from one shuffle pool (``block_size * shuffle_buffer`` rows), read together
        so each block is read once (at most 16, so a DataLoader item stays a few tens of MB)."""
        pool_rows = self.block_size * self.shuffle_buffer
        return min(_MAX_BATCHES_PER_ITEM, max(1, -(-pool_rows // self.batch_size)))

    def _loader(self, indices: np.ndarray, shuffle: bool) -> DataLoader:
        self._ensure_fitted()
        sampler = self._sampler(indices, shuffle)
        if shuffle:
            # The epoch the fit loop runs next: a DataLoader with workers draws from the sampler
            # as soon as it is iterated, before Lightning's set_epoch.
            if self.trainer is not None:
                progress: Any = self.trainer.fit_loop.epoch_progress.current
                sampler.set_epoch(progress.processed)  # the epoch Lightning's set_epoch will name
            elif self._train_sampler is not None:
                sampler.set_epoch(self._train_sampler.epoch)
            if self._pending_sampler_state is not None:
                sampler.load_state_dict(self._pending_sampler_state)
                self._pending_sampler_state = None
            self._train_sampler = sampler
        return make_dataloader(self._require_store(), sampler, self.num_workers, self.pin_memory)

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.split["train"], shuffle=True)

    def val_dataloader(self) -> DataLoader | list[DataLoader]:
        return self._loader(self.split["val"], shuffle=False) if len(self.split["val"]) else []

    def test_dataloader(self) -> DataLoader | list[DataLoader]:
        return self._loader(self.split["test"], shuffle=False) if len(self.split["test"]) else []

    def predict_dataloader(self) -> DataLoader:
        """Every cell exactly once, in storage order, without augmentation."""
        return self._loader(np.arange(self._require_store().n_obs), shuffle=False)

    # ------------------------------------------------------------------------- device hook
    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int = 0) -> Any:
        """Densify and normalize the batch on its device; update monitors; log nothing."""
        if self.pipeline is None or self.monitor is None:
            raise RuntimeError("call setup() before using batches: the pipeline is built there")
        self._ensure_fitted()
        device = batch["cell_index_n"].device
        if self._pipeline_device != device:
            self.pipeline.to(device)
            self.monitor.to(device)
            self._pipeline_device = device
        training = bool(self.trainer is not None and self.trainer.training)
        self.pipeline.train(training)
        with torch.no_grad():
            self.monitor.observe_input(batch)
            out = self.pipeline(batch, on_output=self.monitor.observe)
        self.monitor.check_finite()
        return out

    # --------------------------------------------------------------------------- statistics
    def get_normalization_stats(self) -> dict[str, dict[str, float]]:
        """Per transform: cells seen, mean/std/min/max of its output, zeros, NaN/inf, clipped."""
        return self.monitor.compute() if self.monitor is not None else {}

    def reset_normalization_stats(self) -> None:
        """Clear the monitors (fitted statistics are untouched)."""
        if self.monitor is not None:
            self.monitor.reset()

    def component_stats(self, name: str) -> dict[str, Any]:
        """Statistics of the component called ``name`` (``get_<name>_stats()`` reads this)."""
        for component in self.components:
            if component.name == name:
                return component.stats()
        raise KeyError(f"{type(self).__name__} has no {name!r} component")

    # -------------------------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        """Fitted statistics, gene list, category maps, split, sampler position, components."""
        if self.pipeline is None or self.store is None:
            return {}
        return {
            "version": STATE_VERSION,
            "fitted": fitted_states(self.pipeline),
            "var_names": list(self.store.var_names),
            "categories": dict(self.store.categories),
            "split": {name: torch.from_numpy(indices) for name, indices in self.split.items()},
            "sampler": self._sampler_state(),
            "components": {c.name: c.state_dict() for c in self.components},
        }

    def _sampler_state(self) -> dict[str, Any] | None:
        """The train sampler's state, positioned where the fit loop really is.

        The sampler's own count runs ahead of training when DataLoader workers prefetch, so
        under a fitting trainer the epoch and the batches done come from the fit loop's progress
        (what Lightning restores): a checkpoint saved after the epoch's last batch (batch end,
        validation end or epoch end) resumes at the start of the next epoch, as Lightning does.
        """
        if self._train_sampler is None:
            return self._pending_sampler_state
        state = self._train_sampler.state_dict()
        trainer = self.trainer
        if trainer is None or trainer.state.fn != "fit":
            return state
        # Lightning types both trackers as their base class; they count processed items too.
        epoch_progress: Any = trainer.fit_loop.epoch_progress.current
        batch_progress: Any = trainer.fit_loop.epoch_loop.batch_progress.current
        epoch, done = epoch_progress.processed, 0
        if epoch_progress.started > epoch_progress.processed:  # inside an epoch
            done = batch_progress.processed
            if done >= trainer.num_training_batches:
                epoch, done = epoch + 1, 0
        return {**state, "epoch": epoch, "start_batch": done}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore a saved state; before ``setup`` it is applied there, after it at once.

        Refuses (:class:`~enhanced_dm.errors.ConfigError`) a state whose gene list, batch size,
        world size, seed or shuffle settings differ from this DataModule's: resuming would
        silently change the data or their order. The sampler position is applied to the next
        ``train_dataloader()``, so a mid-epoch resume yields exactly the remaining batches.
        """
        if not state_dict:
            return
        if state_dict.get("version") != STATE_VERSION:
            raise ConfigError(
                f"cannot restore DataModule state version {state_dict.get('version')}; "
                f"this enhanced-dm writes version {STATE_VERSION}"
            )
        self._pending_state = state_dict
        # The sampler position only matters when training resumes; validate/test/predict from a
        # checkpoint may use another batch size or number of devices.
        fitting = self.trainer is None or self.trainer.state.fn in (None, "fit")
        self._pending_sampler_state = state_dict.get("sampler") if fitting else None
        if self._pending_sampler_state is not None:
            # Check now, so an incompatible resume fails before any training step.
            probe = self._sampler(state_dict["split"]["train"].numpy(), shuffle=True)
            probe.load_state_dict(self._pending_sampler_state)
        for component in self.components:
            component.load_state_dict(state_dict.get("components", {}).get(component.name, {}))
        if self.store is not None:
            self._apply_state(state_dict)

    def _apply_state(self, state_dict: dict[str, Any]) -> None:
        """Gene check, category maps, split and fitted statistics of a saved state."""
        store = self._require_store()
        if list(state_dict["var_names"]) != list(store.var_names):
            raise ConfigError(
                "cannot restore: the checkpoint's gene list differs from this data's "
                f"({len(state_dict['var_names'])} vs {store.n_genes} genes); pass the same "
                "data and genes= as the run that wrote it"
            )
        store.set_categories(state_dict["categories"])
        self.split = {name: indices.numpy() for name, indices in state_dict["split"].items()}
        if self.pipeline is not None:
            load_fitted_states(self.pipeline, state_dict["fitted"])
            self._statistics_ready = True


def _process_group_world() -> tuple[int, int]:
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
