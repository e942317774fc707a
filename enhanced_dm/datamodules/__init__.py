"""LightningDataModules: the base and one short file per biological DataModule."""

from enhanced_dm.datamodules.base import BaseEnhancedDataModule
from enhanced_dm.datamodules.full import FullVirtualCellDataModule
from enhanced_dm.datamodules.hierarchical import HierarchicalDataModule
from enhanced_dm.datamodules.memory import MemoryDataModule
from enhanced_dm.datamodules.multiscale import MultiScaleDataModule
from enhanced_dm.datamodules.regulatory import RegulatoryDataModule
from enhanced_dm.datamodules.resource import ResourceDataModule
from enhanced_dm.datamodules.stochastic import StochasticDataModule
from enhanced_dm.datamodules.temporal import TemporalDataModule

__all__ = [
    "BaseEnhancedDataModule",
    "FullVirtualCellDataModule",
    "HierarchicalDataModule",
    "MemoryDataModule",
    "MultiScaleDataModule",
    "RegulatoryDataModule",
    "ResourceDataModule",
    "StochasticDataModule",
    "TemporalDataModule",
]
