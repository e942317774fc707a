"""BaseEnhancedDataModule: coordinates store, split, sampler, pipeline, fitting, device hook, state."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, TypeVar

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader

from enhanced_dm.components.base import Component, ComponentSet, NotSetUpError
from enhanced_dm.csr import shared_csr_structure
from enhanced_dm.data.collate import make_dataloader
from enhanced_dm.data.sampler import ResumableBatchSampler
from enhanced_dm.data.sequences import SEQUENCE_ROW_KEY, to_sequences
from enhanced_dm.data.split import make_split
from enhanced_dm.data.store import CellStore, DataInput
from enhanced_dm.datamodules.declaration import declare_datamodule, options_of
from enhanced_dm.datamodules.options import (
    SPLIT_OPTIONS,
    STORE_OPTIONS,
    check_base_options,
)
from enhanced_dm.datamodules.resume import (
    check_same_genes,
    check_state_version,
    fit_loop_position,
    next_epoch,
    restore_pending,
    saved_state,
)
from enhanced_dm.datamodules.sampling import fitting_sampler, make_batch_sampler
from enhanced_dm.fitting.driver import load_fitted_states
from enhanced_dm.fitting.fit_or_load import (
    check_same_data_on_all_ranks,
    fit_or_load,
    process_group_world,
    statistics_key,
)
from enhanced_dm.monitors.pipeline_monitor import PipelineMonitor
from enhanced_dm.options import Option, validate_options
from enhanced_dm.transforms.base import Batch, Pipeline
from enhanced_dm.transforms.build import PipelineSettings, build_pipeline, warn_if_counts_needed
from enhanced_dm.transforms.context import Stage, StepContext, trainer_stage
from enhanced_dm.transforms.grouped import warn_groups_without_train_cells

__all__ = ["BaseEnhancedDataModule"]

ComponentT = TypeVar("ComponentT", bound=Component)


class BaseEnhancedDataModule(L.LightningDataModule):
    """Single-cell minibatches from h5ad files with normalization fitted once on the train split.

    It coordinates; each job lives in its own module: the store (:mod:`enhanced_dm.data.store`),
    the split (:mod:`~enhanced_dm.data.split`), the sampler
    (:mod:`~enhanced_dm.datamodules.sampling`), the pipeline and its slots
    (:mod:`~enhanced_dm.transforms.build`), fitting and the statistics cache
    (:mod:`~enhanced_dm.fitting.fit_or_load`), resuming (:mod:`~enhanced_dm.datamodules.resume`).
    ``setup()`` opens, splits, sets up the components, builds and fits (or loads) the pipeline;
    batches travel as CSR and are normalized on their device in :meth:`on_after_batch_transfer`
    (outside Lightning: :meth:`normalize`): ``x_ng``, ``counts_ng``, ``total_counts_n``,
    ``cell_index_n``, ``<name>_n`` obs codes and the components' keys.

    Options are declared once (:data:`~enhanced_dm.datamodules.options.BASE_OPTIONS` and the
    options of ``component_classes``): validated here, the signature and the Hydra schema are
    generated from them, ``dm.<option>`` reads a value. A biological DataModule is a subclass
    naming its ``component_classes`` (docs/extending.md); ``components=`` appends instances.
    ``cfg`` is accepted for the seed API and ignored.
    """

    component_classes: ClassVar[tuple[type[Component], ...]] = ()
    """The components every instance is built with, from the options they declare."""
    datamodule_options: ClassVar[tuple[Option, ...]] = ()
    """Options of the DataModule itself, beyond the base's and its components' (a composition's
    choice of components, ...)."""
    option_defaults: ClassVar[Mapping[str, Any]] = {}
    """Other defaults for declared options (e.g. the noise-aware normalization of a DataModule
    whose data are raw counts); the signature and the Hydra schema show them."""

    def __init__(
        self,
        data: DataInput,
        *,
        components: Sequence[Component] = (),
        cfg: Any = None,
        **options: Any,
    ) -> None:
        super().__init__()
        values = validate_options(self.declared_options(), options, type(self).__name__)
        self.data = data
        self.options: dict[str, Any] = check_base_options(values)
        built = [
            cls(**{option.name: values[option.name] for option in cls.options})
            for cls in self.component_classes
        ]
        self.components = ComponentSet([*built, *components])
        self.store: CellStore | None = None
        self.pipeline: Pipeline | None = None
        self.monitor: PipelineMonitor | None = None
        self.split: dict[str, np.ndarray] = {}
        self.stats_cache_path: Any = None
        self._pending_state: dict[str, Any] | None = None
        self._statistics_ready = False
        self._train_sampler: ResumableBatchSampler | None = None
        self._pending_sampler_state: dict[str, Any] | None = None
        self._pipeline_device: torch.device | None = None

    @classmethod
    def declared_options(cls) -> list[Option]:
        """Every option of this class (:func:`~enhanced_dm.datamodules.declaration.options_of`)."""
        return options_of(cls)

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        declare_datamodule(cls, BaseEnhancedDataModule)

    def __getattr__(self, name: str) -> Any:
        options = self.__dict__.get("options")
        if options is not None and name in options:
            return options[name]
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    # ------------------------------------------------------------------------------- setup
    def obs_columns(self) -> dict[str, str]:
        """Batch name -> obs column for every obs field the batches carry (conflicts refused)."""
        base = {key: key for key in self.obs_keys}
        if self.batch_key is not None:
            base["batch"] = self.batch_key
        if self.cell_type_key is not None:
            base["cell_type"] = self.cell_type_key
        return self.components.obs_columns(base)

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
        """Open the data, split, set up the components, build the pipeline and fit it (once;
        later calls are no-ops)."""
        if self.store is None:
            self.store = CellStore(
                self.data,
                obs_columns=self.obs_columns(),
                categories=(self._pending_state or {}).get("categories"),
                **{name: self.options[name] for name in STORE_OPTIONS},
            )
            self.split = make_split(
                self.store, **{name: self.options[name] for name in SPLIT_OPTIONS}
            )
            settings = self.pipeline_settings()
            for component in self.components:
                component.configure(settings)
                component.use_split(self.split)
                component.setup(self.store)
        if self.pipeline is None:
            settings = self.pipeline_settings()
            self.pipeline = build_pipeline(settings, self.store.n_genes, self.components)
            self.monitor = PipelineMonitor(
                self.pipeline, self.nan_policy, n_genes=self.store.n_genes
            )
            warn_if_counts_needed(settings, self.store)
            probe = self._sampler(self.split["train"], shuffle=True)  # refuses two owners now
            if self._pending_sampler_state is not None:
                probe.load_state_dict(self._pending_sampler_state)  # refuses an incompatible one
            if not restore_pending(self._pending_state, self.trainer):
                self._ensure_fitted()

    def pipeline_settings(self) -> PipelineSettings:
        """The options that shape the pipeline (:func:`~enhanced_dm.transforms.build.build_pipeline`)."""
        return PipelineSettings.from_options(self.options, self.categories)

    def _ensure_fitted(self) -> None:
        """Fitted statistics from a restored state, the cache, or a fit (once)."""
        if self._statistics_ready:
            return
        assert self.pipeline is not None
        store = self._require_store()
        if process_group_world()[1] > 1:
            check_same_data_on_all_ranks(store.var_names, store.categories, self.split)
        if self._pending_state is not None:
            self._apply_state(self._pending_state)
            # Running state lives in what the components' setup builds, and restoring fitted
            # statistics may reset it (moving statistics start at the fitted ones): load it last.
            self.components.load_running_state(self._pending_state.get("running", {}))
        else:
            self.stats_cache_path = fit_or_load(
                self.pipeline,
                key=self.cache_key,
                cache_dir=self.stats_cache_dir,
                train_batches=self._fitting_dataloader,
                device=self._device(),
                progress=self.progress,
                seed=self.seed,
            )
        warn_groups_without_train_cells(self.pipeline, self.categories)
        self._statistics_ready = True
        self._pipeline_device = None  # fitting may have moved the pipeline

    def cache_key(self) -> str:
        """Fingerprint of data, gene space, categories, split and pipeline configuration."""
        store = self._require_store()
        assert self.pipeline is not None
        return statistics_key(
            store.fingerprint(),
            store.var_names,
            store.categories,
            store.is_counts,
            self.split["train"],
            self.pipeline,
            [component.config() for component in self.components],
        )

    def _fitting_dataloader(self, rank: int = 0, world_size: int = 1) -> DataLoader:
        """This rank's disjoint share of the train cells, in order, each cell once (cells, also
        when a component's sampler makes items of several cells)."""
        training = self._sampler(self.split["train"], shuffle=True)
        cells_per_item = int(getattr(training, "cells_per_item", 1))
        sampler = fitting_sampler(
            self.options, self.split["train"], rank, world_size, cells_per_item
        )
        return make_dataloader(
            self._require_store(), sampler, self.num_workers, persistent_workers=False
        )

    def _world(self) -> tuple[int, int]:
        """(global rank, world size) the data loaders shard over: the attached trainer's, else
        the initialized process group's (a script launched with torchrun), else one process."""
        if self.trainer is not None:
            return self.trainer.global_rank, self.trainer.world_size
        return process_group_world()

    def _device(self) -> torch.device:
        if self.trainer is not None:
            return self.trainer.strategy.root_device
        return torch.device("cpu")

    # -------------------------------------------------------------------------- dataloaders
    def _sampler(
        self, indices: np.ndarray, shuffle: bool, pooled: bool = True
    ) -> ResumableBatchSampler:
        """:func:`~enhanced_dm.datamodules.sampling.make_batch_sampler` for this rank."""
        rank, world_size = self._world()
        return make_batch_sampler(
            self.options,
            self.components,
            indices,
            shuffle=shuffle,
            pooled=pooled,
            rank=rank,
            world_size=world_size,
        )

    def _loader(self, indices: np.ndarray, shuffle: bool) -> DataLoader:
        self._ensure_fitted()
        sampler = self._sampler(indices, shuffle)
        if shuffle:
            sampler.set_epoch(next_epoch(self.trainer, self._train_sampler))
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
        """Normalize the batch on its device for the trainer's stage (:meth:`normalize`)."""
        return self.normalize(batch, stage=trainer_stage(self.trainer))

    def normalize(self, batch: Mapping[str, Any], stage: Stage = "predict") -> Batch:
        """Run the pipeline over a batch on its device: the public way outside Lightning.

        The batch's stamped ``epoch`` and ``batch_index`` (plain ints the data loader adds) go
        into the :class:`~enhanced_dm.transforms.context.StepContext` and not to the model.
        Monitors are updated (nothing is logged). In the ``"train"`` stage training-only steps
        run and components update their running state; items of several cells (sequences)
        are reshaped last.
        """
        if self.pipeline is None or self.monitor is None:
            raise RuntimeError("call setup() before using batches: the pipeline is built there")
        self._ensure_fitted()
        batch = dict(batch)
        context = StepContext(
            stage,
            seed=self.seed,
            epoch=int(batch.pop("epoch", 0)),
            global_rank=self._world()[0],
            batch_index=int(batch.pop("batch_index", 0)),
        )
        device = batch["cell_index_n"].device
        if self._pipeline_device != device:
            self.pipeline.to(device)
            self.monitor.to(device)
            self._pipeline_device = device
        self.pipeline.train(context.training)
        with torch.no_grad(), shared_csr_structure():  # input stats share the pipeline's
            self.monitor.observe_input(batch)
            out = self.pipeline(batch, context, on_output=self.monitor.observe)
            self.monitor.check_finite()
            if context.training:
                self.components.update_running(out, context)
        if SEQUENCE_ROW_KEY not in out:
            return out
        sequences = to_sequences(out)
        sequences.update(self.components.sequence_outputs(sequences))
        return sequences

    # --------------------------------------------------------------------------- statistics
    def get_normalization_stats(self) -> dict[str, dict[str, float]]:
        """Per transform: cells seen, mean/std/min/max of its output, zeros, NaN/inf, clipped."""
        return self.monitor.compute() if self.monitor is not None else {}

    def reset_normalization_stats(self) -> None:
        """Clear the monitors (fitted statistics are untouched)."""
        if self.monitor is not None:
            self.monitor.reset()

    def component(self, kind: type[ComponentT]) -> ComponentT:
        """The first component of class ``kind`` (e.g. ``dm.component(PathwayComponent)``)."""
        for component in self.components:
            if isinstance(component, kind):
                return component
        raise KeyError(f"{type(self).__name__} has no {kind.__name__}")

    def component_stats(self, name: str) -> dict[str, Any]:
        """What ``get_<name>_stats()`` returns: the component's report plus the running summary
        (cells seen, mean, std, ...) of each of its :meth:`~Component.output_steps`."""
        component = self.components.named(name)
        report = component.report()
        outputs = self.get_normalization_stats()
        for label, step in component.output_steps().items():
            report[label] = outputs.get(step, {})
        return report

    # -------------------------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        """Fitted statistics, gene list, category maps, split, sampler position, components and
        their running state (never in the statistics cache)."""
        if self.pipeline is None or self.store is None:
            return {}
        return saved_state(
            self.pipeline, self.store, self.split, self._sampler_state(), self.components
        )

    def _sampler_state(self) -> dict[str, Any] | None:
        """The train sampler's state, positioned where the fit loop really is."""
        if self._train_sampler is None:
            return self._pending_sampler_state
        return fit_loop_position(self._train_sampler.state_dict(), self.trainer)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore a saved state; before ``setup`` it is applied there, after it at once.

        Refuses (:class:`~enhanced_dm.errors.ConfigError`) a state whose gene list, batch size,
        world size, seed or shuffle settings differ from this DataModule's: resuming would
        silently change the data or their order. The sampler position is applied to the next
        ``train_dataloader()``, so a mid-epoch resume yields exactly the remaining batches.
        """
        if not state_dict:
            return
        check_state_version(state_dict)
        self._pending_state = state_dict
        # The sampler position only matters when training resumes; validate/test/predict from a
        # checkpoint may use another batch size or number of devices.
        fitting = self.trainer is None or self.trainer.state.fn in (None, "fit")
        self._pending_sampler_state = state_dict.get("sampler") if fitting else None
        if self._pending_sampler_state is not None:
            # Check now, so an incompatible resume fails before any training step (a
            # component's sampler that needs the data is checked in setup instead).
            try:
                probe = self._sampler(state_dict["split"]["train"].numpy(), shuffle=True)
            except NotSetUpError:
                probe = None
            if probe is not None:
                probe.load_state_dict(self._pending_sampler_state)
        self.components.load_state_dict(state_dict.get("components", {}))
        if self.store is not None:
            self._apply_state(state_dict)
            self.components.load_running_state(state_dict.get("running", {}))

    def _apply_state(self, state_dict: dict[str, Any]) -> None:
        """Gene check, category maps, split and fitted statistics of a saved state."""
        store = self._require_store()
        check_same_genes(state_dict, store.var_names)
        store.set_categories(state_dict["categories"])
        self.split = {name: indices.numpy() for name, indices in state_dict["split"].items()}
        if self.pipeline is not None:
            load_fitted_states(self.pipeline, state_dict["fitted"])
            self._statistics_ready = True


declare_datamodule(BaseEnhancedDataModule)
