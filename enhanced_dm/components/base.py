"""The component contract: one piece of biological context a DataModule is built from.

Pipeline order (the one place it is written down; :func:`~enhanced_dm.transforms.build.
build_pipeline` builds it)::

    counts slot       stored values of the sparse counts_ng (count noise, down-sampling)
      -> densify      dense counts_ng (integers), x_ng starts as float32 counts
      -> total-count  (per_cell_normalization)
      -> log1p
    per_cell slot     regress-out, HVG selection, ...
      -> densify_x    x_ng dense, before the first step that cannot read CSR
      -> keep_x_log   x_log_ng = x_ng, only when a later step reads_log_expression
    gene_wise         the DataModule's normalization_type, or the one component that owns it
    after_gene_wise   context features: pathway scores, compartments, TF activity, ...
      -> sequences    items that are sequences are reshaped last (*_nsg, mask_ns)

Within a slot, steps run in component order, then in the order a component lists them.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar, Literal, get_args

import numpy as np
import torch

from enhanced_dm.errors import ConfigError
from enhanced_dm.options import Option, declared_signature, validate_options
from enhanced_dm.transforms.base import Batch, Transform

if TYPE_CHECKING:
    from enhanced_dm.data.sampler import ResumableBatchSampler
    from enhanced_dm.data.store import CellStore
    from enhanced_dm.transforms.build import PipelineSettings
    from enhanced_dm.transforms.context import StepContext

__all__ = ["SLOTS", "Component", "ComponentSet", "NotSetUpError", "Slot"]

Slot = Literal["counts", "per_cell", "gene_wise", "after_gene_wise"]
SLOTS: tuple[str, ...] = get_args(Slot)


class NotSetUpError(RuntimeError):
    """A component asked for something its ``setup`` builds (e.g. a sampler over the data)."""


class Component:
    """Owns its options, reads its annotation files against the data's gene space in ``setup``,
    contributes transforms to the pipeline at declared slots, holds per-dataset constants
    (membership matrices, adjacency, names) and reports its statistics. Every hook is optional.

    * ``name``: short name; ``get_<name>_stats()`` on DataModules and loaders returns
      :meth:`report` (plus the monitors' summary of :meth:`output_steps`).
    * ``options``: the declared constructor options (:class:`~enhanced_dm.options.Option`); the
      constructor takes exactly these (positionally in this order, or by name), validates them
      and stores each as an attribute. DataModules built from components expose them too.
    * ``obs_columns()``: obs columns it needs in the batch (batch name -> obs column).
    * ``configure(settings)``: the DataModule's :class:`~enhanced_dm.transforms.build.
      PipelineSettings`, before ``setup`` (for components that build normalizations).
    * ``use_split(split)``: the DataModule's split (cell indices per split), before ``setup``
      (for constants that depend on the train cells, e.g. time bins).
    * ``setup(store)``: read files, build constants; called once, before fitting.
    * ``transforms()``: ``(name, transform, slot)`` triples (slots: module docstring).
    * ``config()``: what changes fitted statistics (enters the statistics cache key).
    * ``state_dict()`` / ``load_state_dict()``: per-dataset constants saved in checkpoints.
    * ``update_running(batch, context)``, ``running_state()``, ``load_running_state()``: state
      that changes during training (``has_running_state = True``). ``update_running`` is called
      in the train stage only, after the pipeline, on every DDP rank; it must leave every rank
      with the same state (:func:`~enhanced_dm.components.running.all_ranks_sum`). The state is
      saved in the DataModule's ``state_dict()["running"]``, never in the statistics cache.
    * ``batch_sampler(indices, ...)``: replaces how cell indices become batches (e.g. sequences);
      raises :class:`NotSetUpError` when asked before ``setup`` if it needs the data.
    * ``sequence_outputs(batch)``: keys computed from a batch of sequences once it has its
      sequence layout (``*_ns`` keys, ``mask_ns``), e.g. attention masks over positions.
    * ``missing_input(obs_keys)``: why the component cannot run on data with these obs columns
      (or a file it needs is absent), None when it can; a composition switches it off then.
    * ``context_streams()``: the per-cell feature matrices it writes that a model reads beside
      ``x_ng`` (batch key -> at most this many columns; after ``setup``), which a composition
      may weight.
    """

    name: ClassVar[str] = "component"
    options: ClassVar[tuple[Option, ...]] = ()
    has_running_state: ClassVar[bool] = False

    def __init__(self, *args: Any, **options: Any) -> None:
        owner = type(self).__name__
        if len(args) > len(self.options):
            raise TypeError(f"{owner} takes at most {len(self.options)} positional options")
        for option, value in zip(self.options, args, strict=False):
            if option.name in options:
                raise TypeError(f"{owner} got option {option.name!r} twice")
            options[option.name] = value
        values = validate_options(self.options, options, owner)
        for name, value in values.items():
            setattr(self, name, value)

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "options" in cls.__dict__ and "__init__" not in cls.__dict__:
            # A constructor of the subclass's own, so its signature can name its options.
            def __init__(self: Component, *args: Any, **options: Any) -> None:
                super(cls, self).__init__(*args, **options)

            __init__.__doc__ = cls.__doc__
            cls.__init__ = __init__  # type: ignore[method-assign]
        if "options" in cls.__dict__:
            declared_signature(cls.__init__, cls.options, keyword_only=False)

    def __getattr__(self, name: str) -> Any:
        # Declared options are set as attributes in __init__; this tells type checkers so
        # (attributes missing at run time still raise AttributeError).
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def option_values(self) -> dict[str, Any]:
        """The declared options' current values."""
        return {option.name: getattr(self, option.name) for option in self.options}

    # ------------------------------------------------------------------------------- hooks
    def obs_columns(self) -> dict[str, str]:
        return {}

    def configure(self, settings: PipelineSettings) -> None:
        """The DataModule's normalization settings (type, grouping, options), given before
        ``setup`` to components that build gene-wise normalizations of their own."""

    def use_split(self, split: Mapping[str, np.ndarray]) -> None:
        """The DataModule's split (``"train"``, ``"val"``, ``"test"`` -> cell indices)."""

    def setup(self, store: CellStore) -> None:
        """Read annotation files and build constants on ``store``'s gene space."""

    def transforms(self) -> list[tuple[str, Transform, Slot]]:
        return []

    def step(self, name: str) -> Any:
        """One of this component's transforms by its pipeline name (after ``setup``)."""
        for step_name, transform, _ in self.transforms():
            if step_name == name:
                return transform
        raise KeyError(f"{type(self).__name__} has no step {name!r}")

    def output_steps(self) -> dict[str, str]:
        """Label -> pipeline step whose output the monitors summarize in the stats report."""
        return {}

    def config(self) -> dict[str, Any]:
        return {}

    def report(self) -> dict[str, Any]:
        """What ``get_<name>_stats()`` returns (before the monitors' summaries are added)."""
        return {}

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what ``state_dict`` saved."""

    def update_running(self, batch: Batch, context: StepContext) -> None:
        """Update running state from a normalized training batch (train stage only)."""

    def running_state(self) -> dict[str, Any]:
        return {}

    def load_running_state(self, state: Mapping[str, Any]) -> None:
        """Restore what ``running_state`` returned."""

    def batch_sampler(
        self,
        indices: np.ndarray,
        *,
        shuffle: bool,
        seed: int,
        rank: int,
        world_size: int,
        batch_size: int,
    ) -> ResumableBatchSampler | None:
        """A sampler of this component's items over ``indices``, or None (the DataModule's)."""
        return None

    def sequence_outputs(self, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Keys added to a batch of sequences after it is reshaped (none by default)."""
        return {}

    def missing_input(self, obs_keys: Collection[str]) -> str | None:
        """The obs columns it reads (:meth:`obs_columns`) that the data lack, in words, or None."""
        missing = sorted(set(self.obs_columns().values()) - set(obs_keys))
        return f"the data have no obs column {missing}" if missing else None

    def context_streams(self) -> dict[str, int]:
        """Batch key -> most columns of each context stream it writes (none by default)."""
        return {}


class ComponentSet(list[Component]):
    """A DataModule's components, with what the DataModule asks of all of them together.

    Names are unique; ``obs_columns`` and ``batch_sampler`` refuse conflicts (two columns for one
    batch name, two owners of the sampler) with a :class:`~enhanced_dm.errors.ConfigError`.
    """

    def __init__(self, components: Sequence[Component] = ()) -> None:
        super().__init__(components)
        names = [component.name for component in self]
        if len(set(names)) != len(names):
            raise ConfigError(f"component names must be unique, got {names}")

    def named(self, name: str) -> Component:
        for component in self:
            if component.name == name:
                return component
        raise KeyError(f"no {name!r} component")

    def obs_columns(self, base: Mapping[str, str]) -> dict[str, str]:
        """Batch name -> obs column: ``base`` (the DataModule's own), then each component's.

        The same name asked for the same column twice is fine; for two different columns it is
        a :class:`~enhanced_dm.errors.ConfigError` naming both owners.
        """
        columns = dict(base)
        owners = dict.fromkeys(base, "the DataModule's options")
        for component in self:
            owner = f"component {component.name!r}"
            for name, column in component.obs_columns().items():
                if columns.setdefault(name, column) != column:
                    raise ConfigError(
                        f"batch name {name!r} is mapped to obs column {columns[name]!r} by "
                        f"{owners[name]} and to {column!r} by {owner}"
                    )
                owners.setdefault(name, owner)
        return columns

    def batch_sampler(self, indices: np.ndarray, **arguments: Any) -> ResumableBatchSampler | None:
        """The batch sampler of the one component that replaces it, or None."""
        owned = [
            (component.name, sampler)
            for component in self
            if (sampler := component.batch_sampler(indices, **arguments)) is not None
        ]
        if len(owned) > 1:
            raise ConfigError(
                f"components {[name for name, _ in owned]} each replace the batch sampler; "
                "at most one may"
            )
        return owned[0][1] if owned else None

    def sequence_outputs(self, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Every component's :meth:`Component.sequence_outputs`, merged."""
        out: dict[str, torch.Tensor] = {}
        for component in self:
            out.update(component.sequence_outputs(batch))
        return out

    def update_running(self, batch: Batch, context: StepContext) -> None:
        for component in self:
            if component.has_running_state:
                component.update_running(batch, context)

    def state_dict(self) -> dict[str, dict[str, Any]]:
        return {component.name: component.state_dict() for component in self}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        for component in self:
            component.load_state_dict(state.get(component.name, {}))

    def running_state(self) -> dict[str, dict[str, Any]]:
        return {c.name: c.running_state() for c in self if c.has_running_state}

    def load_running_state(self, state: Mapping[str, Any]) -> None:
        for component in self:
            if component.has_running_state and component.name in state:
                component.load_running_state(state[component.name])
