"""Biological components (pathways, compartments, regulatory, temporal, noise, resource, ...)."""

from enhanced_dm.components.base import Component
from enhanced_dm.components.compartments import CompartmentComponent
from enhanced_dm.components.pathways import GeneSetComponent, GeneSetSelection, PathwayComponent

__all__ = [
    "CompartmentComponent",
    "Component",
    "GeneSetComponent",
    "GeneSetSelection",
    "PathwayComponent",
]
