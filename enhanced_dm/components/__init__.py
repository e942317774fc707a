"""Biological components (pathways, compartments, regulatory, temporal, noise, resource, ...)."""

from enhanced_dm.components.base import Component
from enhanced_dm.components.compartments import CompartmentComponent
from enhanced_dm.components.memory import MemoryComponent
from enhanced_dm.components.multiscale import MultiScaleComponent
from enhanced_dm.components.pathways import GeneSetComponent, GeneSetSelection, PathwayComponent
from enhanced_dm.components.regulatory import RegulatoryComponent
from enhanced_dm.components.resource import ResourceComponent
from enhanced_dm.components.stochastic import StochasticComponent
from enhanced_dm.components.temporal import TemporalComponent
from enhanced_dm.components.weighting import StreamWeighting

__all__ = [
    "CompartmentComponent",
    "Component",
    "GeneSetComponent",
    "GeneSetSelection",
    "MemoryComponent",
    "MultiScaleComponent",
    "PathwayComponent",
    "RegulatoryComponent",
    "ResourceComponent",
    "StochasticComponent",
    "StreamWeighting",
    "TemporalComponent",
]
