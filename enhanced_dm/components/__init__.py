"""Biological components (pathways, compartments, regulatory, temporal, noise, resource, ...)."""

from enhanced_dm.components.base import Component

__all__ = ["Component"]
