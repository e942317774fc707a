"""FullVirtualCellDataModule: every biological component in one pipeline, with adaptive weighting
of the context streams."""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

from enhanced_dm.components.base import Component, ComponentSet
from enhanced_dm.components.compartments import CompartmentComponent
from enhanced_dm.components.memory import MemoryComponent
from enhanced_dm.components.multiscale import MultiScaleComponent
from enhanced_dm.components.pathways import PathwayComponent
from enhanced_dm.components.regulatory import RegulatoryComponent
from enhanced_dm.components.resource import ResourceComponent
from enhanced_dm.components.stochastic import StochasticComponent
from enhanced_dm.components.temporal import TemporalComponent
from enhanced_dm.components.weighting import StreamWeighting
from enhanced_dm.data.store import obs_keys
from enhanced_dm.datamodules.memory import MemoryDataModule
from enhanced_dm.datamodules.multiscale import MultiScaleDataModule
from enhanced_dm.datamodules.regulatory import RegulatoryDataModule
from enhanced_dm.datamodules.resource import ResourceDataModule
from enhanced_dm.datamodules.stochastic import StochasticDataModule
from enhanced_dm.datamodules.temporal import TemporalDataModule
from enhanced_dm.errors import ConfigError
from enhanced_dm.options import Option
from enhanced_dm.transforms.build import BASE_GENE_WISE

__all__ = ["FullVirtualCellDataModule"]

COMPOSED = (
    PathwayComponent,
    CompartmentComponent,
    MultiScaleComponent,
    RegulatoryComponent,
    ResourceComponent,
    TemporalComponent,
    StochasticComponent,
    MemoryComponent,
)
"""The components ``enabled=`` chooses from, in pipeline order (weighting always comes last)."""


class FullVirtualCellDataModule(
    MultiScaleDataModule,
    RegulatoryDataModule,
    ResourceDataModule,
    TemporalDataModule,
    StochasticDataModule,
    MemoryDataModule,
):
    """The components of every biological DataModule in one pipeline, nothing copied: pathways
    and compartments, the three scales (the pathway scale is the first ``pathway_scale_dim``
    pathways of the one pathway component), the TF network, resources, time, count noise and
    memory, then :class:`~enhanced_dm.components.weighting.StreamWeighting`.

    Every component option is an option here, by its name. ``enabled`` names the components to
    run (default: every one whose inputs the data have; one whose input is missing, e.g. no
    ``time_key`` column, is switched off with one warning, and is a
    :class:`~enhanced_dm.errors.ConfigError` when ``enabled`` names it). ``gene_wise`` names the
    owner of the gene-wise step: ``"base"`` (``normalization_type``, the default) or
    ``"temporal"``, ``"memory"``, ``"regulatory"``; beside another owner the memory component
    keeps its moving z-score in ``x_memory_ng``. Context streams are scaled to equal total
    variance on the train split (``adaptive_weighting``) or by ``stream_weights``.
    ``get_comprehensive_stats()`` nests every component's statistics.
    """

    component_classes: ClassVar[tuple[type[Component], ...]] = (*COMPOSED, StreamWeighting)
    option_defaults: ClassVar[Mapping[str, Any]] = {}
    datamodule_options = (
        Option(
            "enabled",
            None,
            Sequence[str] | None,
            f"Components to run, of {[c.name for c in COMPOSED]}; None: all the data can feed.",
        ),
        Option(
            "gene_wise",
            BASE_GENE_WISE,
            str,
            "Owner of the gene-wise step: 'base' (normalization_type) or a component's name.",
        ),
    )

    def __init__(self, data: Any, **options: Any) -> None:
        super().__init__(data, **options)
        self.switched_off: dict[str, str] = {}
        """Component name -> why it does not run (not enabled, or an input the data lack)."""
        known = [component.name for component in COMPOSED]
        enabled = self.options["enabled"]
        if enabled is not None:
            unknown = sorted(set(enabled) - set(known))
            if unknown:
                raise ConfigError(f"enabled names unknown components {unknown}; known: {known}")
            self._switch_off({name: "not in enabled" for name in known if name not in set(enabled)})

    @property
    def weighting(self) -> StreamWeighting:
        return self.component(StreamWeighting)

    def _switch_off(self, reasons: Mapping[str, str]) -> None:
        """Drop the named components; the multi-scale pathway scale needs the pathway one."""
        self.switched_off.update(reasons)
        self.components = ComponentSet(
            [component for component in self.components if component.name not in reasons]
        )
        names = {component.name for component in self.components}
        if "multiscale" in names and "pathway" not in names and self.num_scales >= 2:
            raise ConfigError(
                "the multiscale component's pathway scale (num_scales >= 2) reads the pathway "
                "component's scores, which is switched off "
                f"({self.switched_off['pathway']}); enable it or set num_scales=1"
            )
        self.weighting.watch(self.components)

    def setup(self, stage: str | None = None) -> None:
        """Switch off the components whose inputs the data lack (once), then set up."""
        if self.store is None:
            self._switch_off_missing_inputs()
        super().setup(stage)

    def _switch_off_missing_inputs(self) -> None:
        keys = obs_keys(self.data)
        missing = {
            component.name: reason
            for component in self.components
            if isinstance(component, COMPOSED) and (reason := component.missing_input(keys))
        }
        asked = [name for name in missing if name in (self.options["enabled"] or ())]
        if asked:
            raise ConfigError(
                f"enabled names {asked}, but the data cannot feed them: "
                + "; ".join(f"{name}: {missing[name]}" for name in asked)
            )
        if missing:
            warnings.warn(
                "FullVirtualCellDataModule switched off "
                + "; ".join(f"{name} ({reason})" for name, reason in missing.items()),
                stacklevel=3,
            )
            self._switch_off(missing)
        else:
            self.weighting.watch(self.components)

    # --------------------------------------------------------------------------- statistics
    def component_stats(self, name: str) -> dict[str, Any]:
        """As the base's, or ``{"enabled": False, "reason": ...}`` for a switched-off component."""
        if name in self.switched_off:
            return {"enabled": False, "reason": self.switched_off[name]}
        return super().component_stats(name)

    def get_comprehensive_stats(self) -> dict[str, Any]:
        """Every statistic in one nest: ``normalization`` (each step's running summary), then
        each component's ``get_<name>_stats()`` by name (``weighting``: the stream weights)."""
        stats: dict[str, Any] = {"normalization": self.get_normalization_stats()}
        for component_class in self.component_classes:
            stats[component_class.name] = self.component_stats(component_class.name)
        return stats
